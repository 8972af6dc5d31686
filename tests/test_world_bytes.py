"""The synthetic world is the same bytes wherever it is made, and the demo world is the one dvc.lock records.

Hashes are DVC's own (dvc_data's build, with the project's .dvcignore, as `dvc status` hashes an
out): a hand-written hash could agree with itself and still disagree with DVC.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml
from dvc.fs import LocalFileSystem
from dvc.ignore import DvcIgnoreFilter
from dvc_data.hashfile.build import build
from dvc_data.hashfile.db import HashFileDB

from conftest import PARAMS_DIR, run_script
from copa.config import load_params
from copa.data.synth.ownership import SNAKEMAKE_MARKER
from copa.data.synth.world import generate_world

REPO = Path(__file__).parents[1]



def dvc_hash(out: Path, project: Path | None = None) -> tuple[str, int, int, dict[str, str]]:
    """DVC's hash of the folder ``out``, as dvc.lock records an uncached out: (md5 with its .dir
    suffix, size, nfiles, each file's md5). The .dvcignore of ``project`` (a folder above) applies."""
    project = project or out
    fs = LocalFileSystem()
    odb = HashFileDB(fs, str(project / ".dvc" / "cache"))  # a dry run writes nothing there
    _, meta, tree = build(odb, str(out), fs, "md5", ignore=DvcIgnoreFilter(fs, str(project)), dry_run=True)
    return tree.hash_info.value, meta.size, meta.nfiles, {"/".join(key): hash_info.value for key, _, hash_info in tree}


def scratch_project(tmp_path: Path) -> Path:
    """A folder with the repository's .dvcignore: what DVC skips there, it skips in the repository."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / ".dvcignore", project / ".dvcignore")
    return project


def differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


def test_fixture_world_is_the_same_bytes_under_any_root_workers_and_hash_seed(tmp_path, fixture_world):
    """Another root (name, depth, spaces, non-ASCII), two worker processes, and another process with
    another string hash seed (set / dict order), locale and OpenBLAS kernel: every file the same. (A dot product
    once made the demo world's bytes hang on the CPU's kernel; this small world held no case it rounded
    differently, so test_synth's polygon-area test is the guard against that.)"""
    root = tmp_path / "other place" / "wörld root"
    args = ["-m", "copa", "--profile", "fixture", "--params-dir", str(PARAMS_DIR), "synth", "--root", str(root), "--workers", "2", "--quiet"]
    done = run_script(args, PYTHONHASHSEED="12345", LC_ALL="C", OPENBLAS_CORETYPE="Nehalem")
    assert done.returncode == 0, done.stderr
    *here, here_files = dvc_hash(fixture_world)
    *there, there_files = dvc_hash(root)
    assert here == there, f"files that differ: {differing(here_files, there_files)[:10]}"


def test_a_world_made_by_snakemake_hashes_as_the_generators_files(tmp_path, fixture_world):
    """Snakemake touches an empty marker into the data root after the synth job; DVC must not count
    it, or the world's hash depends on whether Snakemake or `copa synth` made it."""
    project = scratch_project(tmp_path)
    by_snakemake = project / "data" / "synthetic-fixture"
    shutil.copytree(fixture_world, by_snakemake)
    (by_snakemake / SNAKEMAKE_MARKER).touch()
    assert dvc_hash(by_snakemake, project)[:3] == dvc_hash(fixture_world)[:3], f"DVC hashes {SNAKEMAKE_MARKER}: list it in .dvcignore"


def test_the_demo_world_is_the_one_dvc_lock_records(tmp_path):
    """Regenerates the demo world (about 2 minutes in `make test` on 2 cores) where the `data` stage's Snakemake
    run puts it, marker included, and compares DVC's hash with the lock's."""
    params = load_params("demo", params_dir=PARAMS_DIR)
    out = params.data.root  # the `data` stage's out: the demo profile's data root
    lock = yaml.safe_load((REPO / "dvc.lock").read_text(encoding="utf-8"))
    [locked] = [o for o in lock["stages"]["data"]["outs"] if o["path"] == out]
    project = scratch_project(tmp_path)
    root = project / out
    workers = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))  # this test's share of the cores (conftest)
    generate_world(params.synth, root, progress=False, workers=workers)
    (root / SNAKEMAKE_MARKER).touch()
    md5, size, nfiles, _ = dvc_hash(root, project)
    assert (md5, size, nfiles) == (locked["md5"], locked["size"], locked["nfiles"]), (
        f"the demo world this code generates is md5 {md5} ({nfiles} files, {size} bytes) to DVC, but dvc.lock's `data` stage "
        f"records {locked['md5']} ({locked['nfiles']} files, {locked['size']} bytes) for {out}. If the generator or the demo's "
        "synth params changed on purpose, refresh the lock with the project's environment active: `dvc repro data` "
        "(Snakemake regenerates the world and results/demo/data_validation.json), then commit dvc.lock and "
        "results/demo/data_validation.json. If nothing was meant to change, the world is no longer byte-stable, or this "
        f"environment draws other bytes ({drawing_libraries()} here; the lock holds the world that "
        "requirements.lock's wheels from PyPI draw, as CI installs them)."
    )


def drawing_libraries() -> str:
    """The versions that draw and encode the world's images, for the failure message."""
    import numpy
    import PIL
    from PIL import features

    return f"NumPy {numpy.__version__}, Pillow {PIL.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}"
