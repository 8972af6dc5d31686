"""Web image-text pairs in the Conceptual Captions (CC3M) style: a headerless TSV,
``caption<TAB>image`` per line, as ``Train_GCC-training.tsv``. The official file's second column
is a URL; after download (e.g. with img2dataset) it must be the image path relative to the TSV's
folder, which is what the harness reads and what the synthetic world writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from copa.data.formats.records import FormatError
from copa.data.images import image_file_problem

TRAIN_FILE = "Train_GCC-training.tsv"
VAL_FILE = "Validation_GCC-1.1.0-Validation.tsv"


@dataclass(frozen=True)
class WebPair:
    line: int  # 1-based line number in the TSV: the pair's id
    caption: str
    path: Path


def read_web_pairs(path: Path, check_files: bool = True) -> list[WebPair]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise FormatError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    pairs = []
    # Lines end at "\n" only: str.splitlines() would also split captions at \x0c, \x85, \u2028, ...
    for number, line in enumerate(_lines(text), start=1):
        label = f"line {number}"
        columns = line.split("\t")
        if len(columns) != 2:
            raise FormatError(path, f"expected 2 tab-separated columns (caption, image), got {len(columns)}", label)
        caption, image = columns
        if not caption.strip():
            raise FormatError(path, "empty caption", label, "caption")
        if "://" in image:
            raise FormatError(path, f"{image!r} is a URL: download the images and write their local paths", label, "image")
        pair = WebPair(number, caption, path.parent / image)
        if check_files and (problem := image_file_problem(pair.path)[0]):
            raise FormatError(path, str(problem), label, "image")
        pairs.append(pair)
    return pairs


def _lines(text: str) -> list[str]:
    """The lines of a "\n"-terminated text (read_text has already turned "\r\n" into "\n")."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def write_web_pairs(path: Path, pairs: list[WebPair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for pair in pairs:
        if any(c in pair.caption for c in "\t\n\r"):
            raise ValueError(f"caption of pair {pair.line} contains a tab, newline or carriage return: {pair.caption!r}")
        lines.append(f"{pair.caption}\t{pair.path.relative_to(path.parent).as_posix()}\n")
    path.write_text("".join(lines), encoding="utf-8")
