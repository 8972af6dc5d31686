"""Every numeric parameter has a range, checked when the params load (issue 20 item 3): a bad value
stops `copa` (exit 2, one line naming the file, key, value and range) and the workflow before any
job, and nothing the profiles and grids ship is refused."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
import typing

import pytest

from conftest import HANG_GUARD_S, PARAMS_DIR
from copa.cli import main
from copa.config import Params, ParamsError, load_params
from copa.report.grids import available_grids, load_grid, profile_location, profile_resolution
from copa.train.architectures import architecture

REPO = PARAMS_DIR.parent
HUGE = "1" + "0" * 400  # 10**400: past any 64-bit integer (and any float)

# (override on the fixture profile, key, the value as the message shows it, the range in words); one per kind of range
BAD = [
    ("pretrain.lr_text=-1.0e-3", "pretrain.lr_text", "-0.001", "> 0 and finite"),
    ("pretrain.lr_vision=.nan", "pretrain.lr_vision", "nan", "> 0 and finite"),
    ("finetune.vqa.lr_text=.inf", "finetune.vqa.lr_text", "inf", "> 0 and finite"),
    ("pretrain.encoder_init.lr=0", "pretrain.encoder_init.lr", "0", "> 0 and finite"),
    ("finetune.grounding.grad_clip=0", "finetune.grounding.grad_clip", "0", "> 0 and finite"),  # a range on an optional value
    ("pretrain.min_lr=" + HUGE, "pretrain.min_lr", "1000...0000 (401 digits)", ">= 0 and finite"),
    ("pretrain.epochs=0", "pretrain.epochs", "0", ">= 1 and < 2**63"),
    ("pretrain.epochs=" + HUGE, "pretrain.epochs", "1000...0000 (401 digits)", ">= 1 and < 2**63"),
    ("pretrain.queue_size=-1", "pretrain.queue_size", "-1", ">= 0 and < 2**63"),
    ("finetune.retrieval.batch_size=0", "finetune.retrieval.batch_size", "0", ">= 1 and < 2**63"),
    ("model.selection.keep_ratio=1.5", "model.selection.keep_ratio", "1.5", "in (0, 1]"),
    ("model.selection.keep_ratio=0", "model.selection.keep_ratio", "0", "in (0, 1]"),
    ("model.selection.location=[0]", "model.selection.location[0]", "0", ">= 1 and < 2**63"),
    ("model.selection.location=[4]", "model.selection.location", "[4]",
     "layers in 1..3: tpd selects after layer k of model.vision_depth 4"),
    ("model.selection.location=[1, 2]", "model.selection.location", "[1, 2]", "one layer for tpd"),
    ("pretrain.mlm_probability=1.5", "pretrain.mlm_probability", "1.5", "in [0, 1]"),
    ("finetune.vqa.weight_decay=-0.05", "finetune.vqa.weight_decay", "-0.05", ">= 0 and finite"),
    ("seed=-1", "seed", "-1", ">= 0 and < 2**63"),
    ("finetune.captioning.label_smoothing=1.0", "finetune.captioning.label_smoothing", "1.0", "in [0, 1)"),
    ("model.dropout=1.0", "model.dropout", "1.0", "in [0, 1)"),
    ("synth.jpeg_quality=101", "synth.jpeg_quality", "101", "in [0, 100]"),
    ("finetune.vqa.image_size=100", "finetune.vqa.image_size", "100", "a multiple of patch_labels.patch_size (16)"),
    ("model.vision_heads=3", "model.vision_heads", "3", "a divisor of model.vision_dim (32)"),
    ("synth.image_side=[96, 64]", "synth.image_side", "[96, 64]", "[min, max] with min <= max"),
    ("report.seeds=[0, 0]", "report.seeds", "[0, 0]", "one or more seeds, each once"),
]


def _line(override: str, key: str, value: str, words: str) -> str:
    return f"--set: key '{key}' = {value}: must be {words}"


@pytest.mark.parametrize("override, key, value, words", BAD, ids=[b[0][:40] for b in BAD])
def test_copa_refuses_an_out_of_range_value_in_one_line(override, key, value, words, capsys):
    assert main(["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "--set", override, "params"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"copa params: error: {_line(override, key, value, words)}\n"


def test_a_value_from_a_file_is_refused_naming_that_file(tmp_path):
    params_dir = tmp_path / "params"
    (params_dir / "profiles").mkdir(parents=True)
    (params_dir / "base.yaml").write_text((PARAMS_DIR / "base.yaml").read_text())
    profile = (PARAMS_DIR / "profiles" / "fixture.yaml").read_text()
    (params_dir / "profiles" / "fixture.yaml").write_text(profile.replace("  queue_size: 32", "  queue_size: -32"))
    with pytest.raises(ParamsError) as error:
        load_params("fixture", (), params_dir)
    assert str(error.value) == f"{params_dir / 'profiles' / 'fixture.yaml'}: key 'pretrain.queue_size' = -32: must be >= 0 and < 2**63"


# A representative subset through the workflow: parse-time refusal, no job planned.
WORKFLOW_BAD = [b for b in BAD if b[0] in ("model.selection.keep_ratio=1.5", "pretrain.lr_vision=.nan", "pretrain.epochs=" + HUGE,
                                              "model.selection.location=[4]", "finetune.vqa.image_size=100")]


@pytest.mark.parametrize("override, key, value, words", WORKFLOW_BAD, ids=[b[0][:40] for b in WORKFLOW_BAD])
def test_the_workflow_refuses_it_before_planning_a_job(override, key, value, words):
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--workflow-profile", "profiles/fixture", "--config", f'set=["{override}"]'],
                            cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)
    # exit 2 and the one line, as `copa` gives: no Snakemake traceback, no job planned (before it, only
    # Snakemake's own notice of the workflow profile it reads)
    assert (result.returncode, result.stderr, result.stdout) == \
        (2, "Using workflow specific profile profiles/fixture for setting default command line arguments.\n"
            f"bad parameters: {_line(override, key, value, words)}\n", "")


def test_nothing_the_profiles_and_grids_ship_is_refused():
    """Every profile loads, and with it every grid row's run (its selection, architecture and resolutions, as the
    workflow sets them from the run's name): nothing valid is refused."""
    grids = [load_grid(name, PARAMS_DIR) for name in available_grids(PARAMS_DIR)]
    for profile in ("fixture", "demo", "paper"):
        params = load_params(profile, (), PARAMS_DIR)
        for grid in grids:
            for row in grid.rows:
                none = row.method == "none"
                location = params.model.selection.location if none else [profile_location(k, params.model.vision_depth) for k in row.location]
                sets = [f"model.selection.method={row.method}", f"model.selection.location={list(location)}",
                        f"model.selection.keep_ratio={1.0 if none else row.keep}", f"architecture={row.architecture}"]
                if row.resolution is not None:
                    sets += [f"finetune.vqa.image_size={profile_resolution(row.resolution, params)}",
                             f"efficiency.image_size={profile_resolution(row.resolution, params, 'efficiency')}"]
                architecture(load_params(profile, sets, PARAMS_DIR))  # raises on a refusal (the registry's too: its selection)


def test_a_grid_row_keep_out_of_range_is_refused_with_the_params_range(tmp_path):
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "mine.yaml").write_text("title: t\ncolumns: [vqa]\nrows:\n  - {label: a, method: tpd, location: 6, keep: 1.5, paper: {}}\n"
                                     "trained: {paper: all, demo: all, fixture: []}\n")
    (tmp_path / "profiles").mkdir()
    for profile in ("fixture", "demo", "paper"):
        (tmp_path / "profiles" / f"{profile}.yaml").write_text("")
    with pytest.raises(ParamsError) as error:
        load_grid("mine", tmp_path)
    assert str(error.value) == f"{grids / 'mine.yaml'}: key 'rows[0].keep' = 1.5: must be in (0, 1]"


def test_every_numeric_parameter_declares_its_range():
    from copa.config import Range

    def unranged(hint: typing.Any, where: str) -> list[str]:
        if typing.get_origin(hint) is typing.Annotated:
            return [] if any(isinstance(a, Range) for a in typing.get_args(hint)[1:]) else [where]
        if hint in (int, float):
            return [where]
        if dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint, include_extras=True)
            return [w for f in dataclasses.fields(hint) if f.name != "provenance" for w in unranged(hints[f.name], f"{where}.{f.name}")]
        if typing.get_origin(hint) in (tuple, typing.Union, types.UnionType):
            return [w for a in typing.get_args(hint) if a is not Ellipsis for w in unranged(a, where)]
        return []

    assert unranged(Params, "params") == []


def test_debug_shows_the_traceback():
    args = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "--set", "pretrain.epochs=0"]
    with pytest.raises(ParamsError, match="pretrain.epochs"):
        main(["--debug", *args, "params"])
    plain = subprocess.run([sys.executable, "-m", "copa", *args, "params"], capture_output=True, text=True, timeout=HANG_GUARD_S)
    debug = subprocess.run([sys.executable, "-m", "copa", "--debug", *args, "params"], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr and "ParamsError" in debug.stderr
