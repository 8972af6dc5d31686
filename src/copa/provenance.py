"""What a result was made with: the code's git commit (benchmarks record it beside their numbers)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(repo: Path) -> str | None:
    """The commit checked out in ``repo``, or None outside a git checkout (an unpacked release)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()
