"""What `copa synth` wrote under a data root, and so may replace: the files its manifest lists.

Nothing else under a root is ever removed. A world is generated in a staging folder beside the
root and moved into place once its manifest is written, so a root holds a finished world or
nothing of the generator's; the staging folder of a killed run is the generator's own, and the
next run clears it. The Snakefile asks :func:`refuse_foreign` at parse time, because the synth
rule's output is the whole root (a ``directory()``), which Snakemake deletes before a rerun.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath

from copa.config import UserError
from copa.data.layout import DataLayout

MANIFEST_FILES = "files"  # the manifest's key: every file the world wrote, relative to the root, in POSIX form
SNAKEMAKE_MARKER = ".snakemake_timestamp"  # what Snakemake adds to a directory() output: the world's too
_SHOWN = 5  # foreign files a refusal names


class ForeignFiles(UserError):
    """A data root holds files `copa synth` did not write: replacing the world would delete them."""


def staging_folder(root: Path) -> Path:
    """Where a world under ``root`` is generated before it is moved there (beside it, hidden)."""
    return root.parent / f".{root.name}.synth-partial"


def world_files(root: Path) -> frozenset[str] | None:
    """The files the manifest under ``root`` lists (the manifest itself and Snakemake's marker
    included), or None where there is no manifest, or one without the list (a world of an older
    `copa synth`)."""
    manifest = DataLayout(root).manifest
    if not manifest.is_file():
        return None
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8")).get(MANIFEST_FILES)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        listed = None
    if not isinstance(listed, list):
        return None
    # only paths inside the root: a hand-edited entry such as "../x" must never be deleted
    inside = (p for p in listed if isinstance(p, str) and not PurePosixPath(p).is_absolute() and ".." not in PurePosixPath(p).parts)
    return frozenset(inside) | {manifest.name, SNAKEMAKE_MARKER}


def files_under(root: Path) -> list[str]:
    """Every file (or link) under ``root``, relative and in POSIX form, sorted."""
    return sorted(
        (Path(folder) / name).relative_to(root).as_posix()
        for folder, dirs, files in os.walk(root)
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]
    )


def refuse_foreign(root: Path, rule: str) -> None:
    """Raise :class:`ForeignFiles` (one line, naming the root and its first foreign files) unless
    ``root`` is absent, empty, or holds only the files of the world its manifest lists. ``rule``
    says what would delete them (the synth rule, `copa synth --overwrite`)."""
    if not root.exists():
        return
    if not root.is_dir():
        raise ForeignFiles(f"data root {root} is a file, not a folder: {rule} would replace it; choose another data root")
    present = files_under(root)
    if not present:
        return
    listed = world_files(root)
    if listed is None:
        why = f"no {DataLayout(root).manifest.name} listing what `copa synth` wrote"
        raise ForeignFiles(f"data root {root} holds files with {why} ({', '.join(present[:_SHOWN])}): {rule} would delete them; "
                           "move them or choose another data root (a world of an older `copa synth`: delete it yourself)")
    foreign = [p for p in present if p not in listed]
    if foreign:
        more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
        raise ForeignFiles(f"data root {root} holds files the synthetic world did not write ({', '.join(foreign[:_SHOWN])}{more}): "
                           f"{rule} would delete them; move them or choose another data root")


def remove_world(root: Path) -> None:
    """Delete the world under ``root``: the files its manifest lists, then the folders they leave
    empty; refused (:class:`ForeignFiles`) while anything else is there."""
    refuse_foreign(root, "`copa synth --overwrite`")
    if not root.exists():
        return
    listed = world_files(root) or frozenset()
    folders = {root}
    for relative in listed:
        path = root / relative
        path.unlink(missing_ok=True)
        folders.update(path.parents[: len(Path(relative).parts) - 1])
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):  # deepest first
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def clear_staging(root: Path) -> Path:
    """The staging folder of ``root``, emptied of a killed run's partial world."""
    stage = staging_folder(root)
    if stage.exists():
        shutil.rmtree(stage)
    return stage


def publish(stage: Path, root: Path) -> None:
    """Move the finished world in ``stage`` to ``root`` (absent or an empty folder)."""
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    root.parent.mkdir(parents=True, exist_ok=True)
    stage.rename(root)
