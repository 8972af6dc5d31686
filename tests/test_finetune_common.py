"""What every downstream fine-tuning shares, through ``copa finetune`` / ``copa evaluate`` on the
fixture world: exact resume after a kill, a checkpoint that does not fit its model config, a
missing Karpathy split (the errors name the file and the keys / split: exit code 2, no traceback),
and ``finetune.<task>.grad_clip`` reaching the engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from copa.cli import main
from copa.train.finetune import CheckpointMismatch, load_finetuned

from conftest import PARAMS_DIR, assert_states_equal, final_state, logged, run_script

PROFILE = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR)]
# pinned here (not left to the profile): a checkpoint at step 2 of 4, the kill at step 3 between two
BASE = PROFILE + ["--set", "finetune.retrieval.epochs=1", "--set", "finetune.retrieval.steps_per_epoch=4",
                  "--set", "finetune.retrieval.checkpoint_every=2"]


def finetune_args(pretrained: Path, root: Path, out: Path) -> list[str]:
    return BASE + ["finetune", "--task", "retrieval", "--pretrained", str(pretrained), "--root", str(root), "--out", str(out)]


def evaluate_args(run: Path, root: Path, split: str, out: Path) -> list[str]:
    return PROFILE + ["evaluate", "--task", "retrieval", "--run", str(run), "--root", str(root), "--split", split, "--json", str(out), "--quiet"]


@pytest.fixture(scope="module")
def finetuned(fixture_world: Path, fixture_pretraining_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted retrieval fine-tuning run (in-process, 4 steps). Read-only for the tests."""
    run = tmp_path_factory.mktemp("finetuned") / "run"
    assert main(finetune_args(fixture_pretraining_run, fixture_world, run)) == 0
    return run


# ------------------------------------------------------------------------------ kill + resume
def test_killed_finetuning_resumes_to_the_same_weights(fixture_world, fixture_pretraining_run, finetuned, tmp_path) -> None:
    run = tmp_path / "run"
    killed = run_script(["-m", "copa", *finetune_args(fixture_pretraining_run, fixture_world, run)], COPA_KILL_AT_STEP="3")
    assert killed.returncode == -9, killed.stderr[-4000:]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (2, 0, 2)  # step 3 is lost and gets redone
    assert not (run / "metrics.json").exists()

    assert main(finetune_args(fixture_pretraining_run, fixture_world, run)) == 0  # resumes from step 2
    # CPU is deterministic: bit-for-bit the uninterrupted run's weights, optimizer state and logs
    assert_states_equal(final_state(run), final_state(finetuned))
    assert any(not torch.equal(v, ckpt["model"][k]) for k, v in final_state(run).items())  # steps 3, 4 did train
    resumed, reference = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["state"] for r in (run, finetuned))
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert_states_equal(resumed[key], reference[key])
    for name in ("train/loss", "train/itc", "train/itm"):
        assert logged(run, name) == logged(finetuned, name)  # the same rows (the engine logs every 10 steps and the last)
    metrics = [{k: v for k, v in json.loads((r / "metrics.json").read_text()).items() if not k.startswith("perf/")} for r in (run, finetuned)]
    assert metrics[0] == metrics[1] and metrics[0]["step"] == 4
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["epoch_000.pt", "last.pt"]


# ------------------------------------------------------------ a checkpoint that does not fit
def edited_copy(finetuned: Path, folder: Path, edit) -> Path:
    """A copy of the run's last checkpoint, vocabulary and pretrained.json, ``edit`` applied to the checkpoint."""
    run = folder / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(finetuned / "vocab", run / "vocab")
    shutil.copy(finetuned / "pretrained.json", run / "pretrained.json")
    ckpt = torch.load(finetuned / "checkpoints" / "last.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, run / "checkpoints" / "last.pt")
    return run


def set_model(key: str, value):
    return lambda ckpt: ckpt["resolved_params"]["model"].__setitem__(key, value)


@pytest.mark.parametrize("edit, expected", [
    (set_model("fusion_layers", 3), ["missing (", "fusion.layers.2.attention.self.query.weight"]),
    (set_model("text_layers", 1), ["unexpected (", "text.layer.1.attention.self.query.weight"]),
    (lambda ckpt: ckpt["model"].pop("model.itm_head.weight"), ["missing (1): itm_head.weight"]),
    (lambda ckpt: ckpt["model"].__setitem__("model.itm_head.weight", torch.zeros(3, 32)),
     ["does not fit the model its resolved_params describe: shape mismatch (checkpoint vs model) (1): itm_head.weight (3, 32) vs (2, 32)"]),
    (set_model("vision_dim", 48), ["shape mismatch", "vision.cls_token (1, 1, 32) vs (1, 1, 48)"]),
], ids=["more-fusion-layers", "fewer-text-layers", "dropped-weight", "resized-weight", "other-vision-dim"])
def test_checkpoint_that_does_not_fit_its_config_names_the_keys(finetuned, fixture_world, tmp_path, capsys, edit, expected) -> None:
    run = edited_copy(finetuned, tmp_path, edit)
    checkpoint = str(run / "checkpoints" / "last.pt")
    with pytest.raises(CheckpointMismatch) as caught:
        load_finetuned(run)
    message = str(caught.value)
    assert message.startswith(f"{checkpoint}: does not fit the model") and all(e in message for e in expected), message
    # the CLI reports it in one line
    assert main(evaluate_args(run, fixture_world, "test", tmp_path / "result.json")) == 2
    err = capsys.readouterr().err
    assert err.startswith("copa evaluate: error: ") and checkpoint in err and expected[-1] in err and "Traceback" not in err
    assert not (tmp_path / "result.json").exists()


# ---------------------------------------------------------------------- a missing split
def world_without(fixture_world: Path, folder: Path, splits: set[str]) -> tuple[Path, Path]:
    """A data root whose COCO Karpathy file lacks the images of ``splits`` (everything else
    links to the fixture world), and that file."""
    root = folder / "world"
    root.mkdir()
    for entry in fixture_world.iterdir():
        if entry.name != "karpathy":
            (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    shutil.copytree(fixture_world / "karpathy", root / "karpathy")
    path = root / "karpathy" / "dataset_coco.json"
    data = json.loads(path.read_text())
    assert {im["split"] for im in data["images"]} & splits
    data["images"] = [im for im in data["images"] if im["split"] not in splits]
    path.write_text(json.dumps(data))
    return root, path


def test_evaluating_a_split_the_data_lacks_is_a_clear_error(finetuned, fixture_world, tmp_path, capsys) -> None:
    root, karpathy_file = world_without(fixture_world, tmp_path, {"val"})
    assert main(evaluate_args(finetuned, root, "val", tmp_path / "val.json")) == 2
    err = capsys.readouterr().err
    assert err.startswith("copa evaluate: error: ") and "Traceback" not in err
    assert f"{karpathy_file}: no image in the Karpathy val split" in err
    assert not (tmp_path / "val.json").exists()
    assert main(evaluate_args(finetuned, root, "test", tmp_path / "test.json")) == 0  # the other split is there


def test_finetuning_without_training_images_is_a_clear_error(fixture_pretraining_run, fixture_world, tmp_path, capsys) -> None:
    root, karpathy_file = world_without(fixture_world, tmp_path, {"train", "restval"})
    run = tmp_path / "run"
    assert main(finetune_args(fixture_pretraining_run, root, run)) == 2
    err = capsys.readouterr().err
    assert err.startswith("copa finetune: error: ") and "Traceback" not in err
    assert f"{karpathy_file}: no image in the Karpathy train / restval split" in err
    assert not (run / "checkpoints").exists()  # nothing trained


def test_grad_clip_reaches_the_engine(fixture_world, fixture_pretraining_run, finetuned, tmp_path) -> None:
    run = tmp_path / "run"
    assert main(["--set", "finetune.retrieval.grad_clip=0.5", *finetune_args(fixture_pretraining_run, fixture_world, run)]) == 0
    assert json.loads((run / "resolved_params.json").read_text())["engine"]["grad_clip"] == 0.5
    norms = logged(run, "train/grad_norm")  # the norm before clipping, logged only when the engine clips
    assert [step for step, _ in norms] == [step for step, _ in logged(run)] and all(float(v) > 0 for _, v in norms)
    assert not (finetuned / "dvclive" / "plots" / "metrics" / "train" / "grad_norm.tsv").exists()  # null: not clipped
    clipped, plain = final_state(run), final_state(finetuned)
    assert any(not torch.equal(clipped[k], plain[k]) for k in plain)
