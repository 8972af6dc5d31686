"""What a result was made with: the code's git commit (and whether the tree had changes), the
versions of the libraries that decide the numbers, and torch's thread count (CPU results are
bit-identical only at the same one). Runs and benchmarks record it beside their numbers."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout an editable install runs from
NUMERIC_PACKAGES = ("torch", "numpy", "timm", "transformers", "tokenizers", "pillow")


def git_commit(repo: Path) -> str | None:
    """The commit checked out in ``repo``, or None outside a git checkout (an unpacked release)."""
    out = _git(repo, "rev-parse", "HEAD")
    return out.strip() if out is not None else None


def code_provenance(repo: Path = PACKAGE_ROOT) -> dict[str, Any]:
    """The commit of ``repo``, whether its tracked files had uncommitted changes, Python's and the
    numeric libraries' versions, and torch's intra-op thread count now."""
    import torch  # here: the command line starts without torch

    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    versions = {}
    for name in NUMERIC_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"commit": git_commit(repo), "dirty": None if status is None else bool(status.strip()),
            "python": platform.python_version(), "packages": versions, "torch_threads": torch.get_num_threads()}


def _git(repo: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
