"""Shared fixtures."""

from __future__ import annotations

import csv
import gc
import os
import subprocess
import sys
from pathlib import Path

# Off until the tests are collected (pytest_collection): the libraries come in without full collections.
gc.disable()

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (CI reproducible), with no per-example time
# limit (a loaded 2-core CI machine must not fail a correct test).
settings.register_profile("copa", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("copa")

from copa.config import load_params
from copa.data.synth.world import generate_world

PARAMS_DIR = Path(__file__).parents[1] / "params"
# Tests assert behaviour, never wall time. A subprocess gets this long before it counts as hung: the
# longest one, the fixture DAG end to end (tests/test_workflow.py), took about 5 minutes on 2 loaded
# cores; an hour is far above any measured duration and still inside CI's 90 minutes.
HANG_GUARD_S = 3600


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "longest: among the longest tests, started first (see pytest_collection_modifyitems)")
    # Where PYTHONDONTWRITEBYTECODE is set (these machines), every Python process the suite starts (the
    # fixture DAG's ~60 jobs, each Snakemake run) compiled again the package's modules it imports: about
    # 0.5 s of the ~9 s a DAG job spends importing. Their bytecode is written once, to the gitignored __pycache__/.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:  # `make test` runs the tests in parallel processes (pytest-xdist): they share the cores
        threads = str(max(1, len(os.sched_getaffinity(0)) // int(workers)))
        os.environ["OMP_NUM_THREADS"] = threads  # the subprocesses a test starts use the same count (bit-identity checks)
        import torch

        torch.set_num_threads(int(threads))


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session):
    """The libraries the test modules import (torch, transformers, timm, pandas, ...) come in with the
    garbage collector off and are frozen once collected, as `copa` does for its model-building
    subcommands (copa.cli.common.load_model_libraries): a full collection while the tests run then
    walks the tests' objects only."""
    try:
        return (yield)
    finally:
        gc.freeze()
        gc.enable()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first, so that parallel workers do not wait for one at the end."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)  # stable: the rest keep their order


# ------------------------------------------------- helpers for engine runs (kill + resume tests)
def run_script(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``python *args`` in a subprocess with extra environment variables (e.g. COPA_KILL_AT_STEP)."""
    return subprocess.run([sys.executable, *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)


def final_state(out: Path) -> dict[str, torch.Tensor]:
    """The model state of an engine run's last checkpoint."""
    import torch

    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def logged(out: Path, name: str = "train/loss") -> list[tuple[int, str]]:
    """(step, value as written) rows of one DVCLive metric of an engine run."""
    with open(out / "dvclive" / "plots" / "metrics" / f"{name}.tsv", newline="") as f:
        return [(int(r["step"]), r[name.split("/")[-1]]) for r in csv.DictReader(f, delimiter="\t")]


@pytest.fixture(scope="session")
def fixture_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root of one fixture-profile synthetic world, generated once per test session (~1 s).

    Shared by every test: treat it as read-only, and copy it (``shutil.copytree``) before
    corrupting anything.
    """
    root = tmp_path_factory.mktemp("fixture_world")
    params = load_params("fixture", params_dir=PARAMS_DIR)
    generate_world(params.synth, root, progress=False)
    return root


@pytest.fixture(scope="session")
def fixture_pretraining_run(fixture_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short fixture-profile pretraining run (3 steps after the encoder init) to fine-tune from.
    Read-only for the tests."""
    from copa.cli import main
    from copa.data.filtering import run_filter

    folder = tmp_path_factory.mktemp("pretraining")
    params = load_params("fixture", params_dir=PARAMS_DIR)
    run_filter(fixture_world, params.filter, folder / "annotations", progress=False)
    args = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), "--set", "pretrain.steps_per_epoch=3", "pretrain",
            "--root", str(fixture_world), "--annotations", str(folder / "annotations"), "--out", str(folder / "run")]
    assert main(args) == 0
    return folder / "run"
