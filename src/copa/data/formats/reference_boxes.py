"""Reference boxes for the TPD generalisation study (COPA Appendix C.1, Figure 5).

JSON Lines, one object per image-text pair:
``{"pair_id": str, "image": str, "caption": str, "width": int, "height": int, "source": str,
"boxes": [{"bbox": [x, y, w, h], "score": float, "phrase": str}]}``.
``image`` is relative to the data root; ``source`` says who drew the boxes:
``"grounding-dino:<model>"`` for the detector stage, ``"oracle"`` for the synthetic world's
ground truth with detector-like noise (never to be passed off as detector output).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from copa.data.formats.records import Box, FormatError, Record, list_records

ORACLE_SOURCE = "oracle"


@dataclass(frozen=True)
class DetectedBox:
    box: Box
    score: float
    phrase: str


@dataclass(frozen=True)
class ReferencePair:
    pair_id: str
    image: str
    caption: str
    width: int
    height: int
    source: str
    boxes: tuple[DetectedBox, ...]


def read_reference_boxes(path: Path, data_root: Path | None = None) -> list[ReferencePair]:
    """``data_root``, when given, is where every pair's image must exist."""
    try:
        # "\n" only: str.splitlines() would also split at \u2028 etc., which JSON strings may hold unescaped.
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise FormatError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise FormatError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if lines[-1] == "":
        lines.pop()
    pairs = []
    for number, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(path, f"not valid JSON: {exc.msg}", f"line {number}") from None
        rec = Record(obj, path, f"line {number}")
        boxes = tuple(
            DetectedBox(b.xywh("bbox"), b.number("score"), b.string("phrase"))
            for b in list_records(rec.array("boxes"), path, f"line {number}.boxes")
        )
        pair = ReferencePair(
            rec.string("pair_id"), rec.string("image"), rec.string("caption"),
            rec.integer("width"), rec.integer("height"), rec.string("source"), boxes,
        )
        if data_root is not None and not (data_root / pair.image).is_file():
            raise rec.error("image", f"image file {data_root / pair.image} does not exist")
        pairs.append(pair)
    return pairs


def write_reference_boxes(path: Path, pairs: list[ReferencePair]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            obj = {
                "pair_id": p.pair_id, "image": p.image, "caption": p.caption, "width": p.width, "height": p.height,
                "source": p.source,
                "boxes": [{"bbox": b.box.as_list(), "score": b.score, "phrase": b.phrase} for b in p.boxes],
            }
            f.write(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
