"""The generic training engine on a toy task: determinism, kill + resume, DDP, atomic saves."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from copa.models.weights import UnreadableWeights
from copa.train.engine import EngineConfig, NonFiniteLoss, atomic_torch_save, train
from conftest import HANG_GUARD_S, PARAMS_DIR, assert_states_equal, final_state, logged, run_script
from engine_toy import ToyTask, engine_config

TOY = Path(__file__).with_name("engine_toy.py")
PARAMS = {"toy": {"dropout": 0.1, "n": 40}}  # what engine_toy.main passes with its defaults


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted in-process run: 2 epochs x 5 steps, checkpoint every 3 steps."""
    out = tmp_path_factory.mktemp("reference")
    train(ToyTask(), engine_config(), out, PARAMS)
    return out


def test_outputs_of_a_run(reference: Path) -> None:
    ckpt_dir = reference / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch_000.pt", "epoch_001.pt", "last.pt"]
    epoch0 = torch.load(ckpt_dir / "epoch_000.pt", weights_only=True)
    assert (epoch0["step"], epoch0["epoch"], epoch0["batch"]) == (5, 1, 0)
    assert epoch0["resolved_params"] == PARAMS and epoch0["engine_config"]["checkpoint_every"] == 3
    assert [s for s, _ in logged(reference)] == list(range(1, 11))
    assert {s for s, _ in logged(reference, "lr/no_decay")} == set(range(1, 11))
    assert (reference / "metrics.json").is_file()
    assert not (reference / "dvclive" / "dvc.yaml").exists()


def test_cpu_runs_are_bit_for_bit_repeatable(reference: Path, tmp_path: Path) -> None:
    train(ToyTask(), engine_config(), tmp_path, PARAMS)
    assert logged(tmp_path) == logged(reference)
    assert_states_equal(final_state(tmp_path), final_state(reference))


def test_killed_run_resumes_to_the_same_parameters(reference: Path, tmp_path: Path) -> None:
    # step 8 is no checkpoint boundary (checkpoints at 3, 5 = epoch end, 6, 9, 10): resume from
    # step 6, i.e. epoch 1, batch 1, after an epoch boundary; dropout makes the RNG state matter
    killed = run_script([str(TOY), str(tmp_path)], COPA_KILL_AT_STEP="8")
    assert killed.returncode == -9, killed.stderr
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (6, 1, 1)
    assert [s for s, _ in logged(tmp_path)] == list(range(1, 9))  # steps 7, 8 get redone

    resumed = run_script([str(TOY), str(tmp_path)])
    assert resumed.returncode == 0, resumed.stderr
    assert_states_equal(final_state(tmp_path), final_state(reference))
    assert logged(tmp_path) == logged(reference)  # one row per step, same values


def test_ddp_step_equals_single_process_step(tmp_path: Path) -> None:
    # one step on a global batch of 8: 2 ranks x 4 samples (gloo) vs 1 process x 8 samples
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(TOY), str(tmp_path / "ddp"), "--epochs", "1", "--samples", "8", "--dropout", "0"],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
    )
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    train(ToyTask(n=8, dropout=0.0), engine_config(epochs=1), tmp_path / "single", {"toy": {"dropout": 0.0, "n": 8}})
    assert len(torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)["rng"]) == 2  # 2 ranks
    a, b = final_state(tmp_path / "ddp"), final_state(tmp_path / "single")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    assert not torch.equal(a["net.0.weight"], ToyTask(n=8, dropout=0.0).model.net[0].weight)  # it trained


def test_failed_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"step": 2, "w": torch.zeros(3)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # temp file removed
    assert torch.load(path, weights_only=True)["step"] == 1


def test_refuses_to_start_over_existing_checkpoints(reference: Path) -> None:
    with pytest.raises(FileExistsError, match="resume=False"):
        train(ToyTask(), engine_config(), reference, PARAMS, resume=False)


def test_refuses_to_resume_under_other_params(reference: Path) -> None:
    with pytest.raises(ValueError, match=r"other parameters.*\['toy'\]"):
        train(ToyTask(), engine_config(), reference, {"toy": {"dropout": 0.2, "n": 40}})


def test_resumes_when_only_an_ignored_section_changed(reference: Path, tmp_path: Path) -> None:
    # pretraining ignores the fine-tuning settings: editing them must not block its resume
    shutil.copytree(reference, tmp_path / "run")
    config = dataclasses.replace(engine_config(), resume_ignores=("finetune",))
    train(ToyTask(), config, tmp_path / "run", {**PARAMS, "finetune": {"lr": 1.0}})
    assert_states_equal(final_state(tmp_path / "run"), final_state(reference))
    with pytest.raises(ValueError, match=r"other parameters.*\['toy'\]"):
        train(ToyTask(), config, tmp_path / "run", {"toy": {"dropout": 0.2, "n": 40}, "finetune": {"lr": 1.0}})


def test_amp_on_cpu_falls_back_with_a_warning(tmp_path: Path) -> None:
    config = EngineConfig(epochs=1, amp="bf16", device="cpu", log_every=1)
    with pytest.warns(UserWarning, match="amp='bf16' needs CUDA"):
        metrics = train(ToyTask(n=8), config, tmp_path, {})
    assert metrics["step"] == 1 and "train/loss" in metrics


@pytest.mark.parametrize("kw", [{"epochs": -1}, {"checkpoint_every": 0}, {"amp": "fp8"}, {"device": "tpu"},
                                {"grad_clip": 0.0}])
def test_config_errors_name_the_field(kw: dict) -> None:
    field = next(iter(kw))
    with pytest.raises(ValueError, match=f"EngineConfig.{field}"):
        EngineConfig(**{"epochs": 1, **kw})


def test_epoch_length() -> None:
    from copa.train.engine import epoch_length

    assert epoch_length(None, 100, 32, "x.steps_per_epoch") == 3  # one pass, the last partial batch dropped
    assert epoch_length(2, 100, 32, "x.steps_per_epoch") == 2
    with pytest.raises(ValueError, match=r"x.steps_per_epoch = 4: must be in \[1, 3\] \(100 examples // batch_size 32\)"):
        epoch_length(4, 100, 32, "x.steps_per_epoch")


def test_resume_removes_the_partial_saves_of_a_kill_and_nothing_else(reference: Path, tmp_path: Path, capsys) -> None:
    """A SIGKILL during a save leaves its temp file (the checkpoint itself is never half-written)."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    partial = [run / "checkpoints" / ".last.pt.k2j4x9.tmp", run / ".metrics.json.tmp"]
    kept = [run / "checkpoints" / "notes.txt", run / "checkpoints" / "my.tmp"]
    for path in partial + kept:
        path.write_bytes(b"half")
    train(ToyTask(), engine_config(), run, PARAMS)
    assert not any(p.exists() for p in partial) and all(p.read_bytes() == b"half" for p in kept)
    assert "removed 2 partial save(s) of an interrupted run: .metrics.json.tmp, .last.pt.k2j4x9.tmp" in capsys.readouterr().err
    assert_states_equal(final_state(run), final_state(reference))


@pytest.mark.parametrize("content, reason", [
    (lambda good, marker: good[: len(good) // 2], ""),  # a checkpoint cut short (the zip reader's OS error)
    (lambda good, marker: b"not a checkpoint at all", "the safe loader refuses it: Unsupported operand"),
    (lambda good, marker: pickle.dumps(ExecutesOnLoad(marker)), "the safe loader refuses it: Unsupported operand"),  # pickled code: refused, never run
], ids=["truncated", "not-torch", "pickled-code"])
def test_a_checkpoint_the_safe_loader_refuses_is_one_line_naming_it(reference: Path, tmp_path: Path, content, reason) -> None:
    run, marker = tmp_path / "run", tmp_path / "executed"
    shutil.copytree(reference, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(content(last.read_bytes(), marker))
    with pytest.raises(UnreadableWeights) as caught:
        train(ToyTask(), engine_config(), run, PARAMS)
    message = str(caught.value)
    assert message.startswith(f"{last}: not a readable checkpoint (") and reason in message and "\n" not in message
    assert not marker.exists()


class ExecutesOnLoad:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_the_cli_reports_an_unreadable_checkpoint_in_one_line(fixture_pretraining_run: Path, fixture_world: Path, tmp_path: Path,
                                                                capsys) -> None:
    from copa.cli import main

    run = tmp_path / "run"
    shutil.copytree(fixture_pretraining_run, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(b"not a checkpoint at all")
    args = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "--set", "pretrain.steps_per_epoch=3", "pretrain",
            "--root", str(fixture_world), "--annotations", str(fixture_pretraining_run.parent / "annotations"), "--out", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"copa pretrain: error: {last}: not a readable checkpoint (") and "Traceback" not in "\n".join(err)


class NanAtStep(ToyTask):
    """The toy task whose 5th batch holds a NaN input (epoch 1, batch 5: after the step-3 checkpoint)."""

    def batches(self, epoch: int, rank: int, world_size: int, start: int):
        for b, batch in enumerate(super().batches(epoch, rank, world_size, start), start=start):
            if epoch == 0 and b == 4:
                batch = {**batch, "x": batch["x"].clone().index_fill_(0, torch.tensor([0]), float("nan"))}
            yield batch

    def describe_batch(self, batch) -> str:
        return f"{len(batch['x'])} rows"


def test_a_non_finite_loss_stops_the_run_before_the_update_naming_the_step(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLoss) as caught:
        train(NanAtStep(), engine_config(), tmp_path, PARAMS)
    assert str(caught.value) == (f"{tmp_path}: step 5 (epoch 1, batch 5): non-finite loss (loss = nan, mae = nan); batch: 8 rows; "
                                 "the run stops, its last checkpoint unchanged")
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 3 and all(torch.isfinite(v).all() for v in last["model"].values())
    assert not (tmp_path / "metrics.json").exists()  # not a finished run


def test_a_run_records_what_ran_it_and_a_resume_under_other_threads_says_so(reference: Path, tmp_path: Path) -> None:
    """CPU results are bit-identical at one thread count: the run records it with the commit and versions."""
    import json

    resolved = json.loads((reference / "resolved_params.json").read_text())["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parents[1], capture_output=True, text=True).stdout.strip()
    assert resolved["commit"] == head and isinstance(resolved["dirty"], bool) and resolved["packages"]["torch"] == torch.__version__.split("+")[0]
    assert resolved["torch_threads"] == torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["provenance"]["torch_threads"]
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = torch.get_num_threads()
    torch.set_num_threads(before + 1)
    try:
        with pytest.warns(UserWarning, match=rf"written under other conditions \(torch_threads {before} -> {before + 1}\)"):
            train(ToyTask(), engine_config(), run, PARAMS)
    finally:
        torch.set_num_threads(before)
