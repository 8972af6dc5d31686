"""Records shared by all formats, and the validated access to JSON records they are read with.

Box convention everywhere in the project: ``Box(x, y, w, h)`` in pixels of the original image,
(x, y) the top-left corner, as COCO, Visual Genome and RefCOCO+ store it.
"""

from __future__ import annotations

import json
import re

import orjson
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

Number = (int, float)


class FormatError(ValueError):
    """A dataset file does not follow its format; names the file, the record and the field."""

    def __init__(self, path: str | Path, problem: str, record: str | None = None, field: str | None = None):
        where = str(path)
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")
        self.path, self.record, self.field, self.problem = str(path), record, field, problem

    def __reduce__(self):
        # rebuilt from its own arguments, not the message: an error raised in a worker process
        # (filtering, patch labels) then reaches the parent intact instead of breaking the pool
        return type(self), (self.path, self.problem, self.record, self.field)


class Box(NamedTuple):
    """A tuple, not a dataclass: real files have millions of boxes and tuples build 4x faster."""

    x: float
    y: float
    w: float
    h: float

    @property
    def area(self) -> float:
        return self.w * self.h

    def as_list(self) -> list[float]:
        return [self.x, self.y, self.w, self.h]


@dataclass(frozen=True)
class Image:
    image_id: int
    path: Path  # absolute, or relative to the working directory
    width: int
    height: int


def load_json(path: Path) -> Any:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise FormatError(path, "file not found") from None
    try:
        return orjson.loads(raw)  # 2-3x faster than json on the multi-GB VG files
    except orjson.JSONDecodeError:
        pass  # json accepts NaN/Infinity (a filter counts such boxes) and words errors by line and column
    try:
        return json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise FormatError(path, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise FormatError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise FormatError(path, "not valid JSON: nested too deeply") from None


_SPACE = re.compile(r"[ \t\n\r]*")


def iter_json_list(path: Path) -> Iterator[Any]:
    """The elements of a file holding one JSON array, parsed one at a time: Visual Genome's files
    take several GB once parsed whole (5.4M regions); this holds the text and one element.

    json's own decoder (C scanner) reads each element in place; unlike orjson it takes NaN (a
    filter counts such boxes), and unlike ijson's C backend it cannot be crashed by deep nesting.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise FormatError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    decoder = json.JSONDecoder()
    i = _SPACE.match(text).end()
    if not text.startswith("[", i):
        top_level_list(load_json(path), path)  # raises, saying what the file holds instead
    i = _SPACE.match(text, i + 1).end()
    if text.startswith("]", i):
        return
    while True:
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise FormatError(path, f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
        except RecursionError:
            raise FormatError(path, "not valid JSON: nested too deeply") from None
        yield item
        i = _SPACE.match(text, i).end()
        if text.startswith("]", i):
            if _SPACE.match(text, i + 1).end() != len(text):
                raise FormatError(path, f"not valid JSON: extra data after the array at character {i + 1}")
            return
        if not text.startswith(",", i):
            raise FormatError(path, f"not valid JSON: expected ',' or ']' at character {i}")
        i = _SPACE.match(text, i + 1).end()


def dump_json(data: Any, path: Path) -> None:
    """Minified, key order as given: the official files are written this way, and it is byte-stable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # json.dumps runs the C encoder; json.dump(f) streams through the pure-Python one (5x slower).
    path.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")


class Record:
    """Validated read access to one JSON object of a dataset file.

    The label that names the record in errors ("annotations[3] (id 42)") is built only when an
    error needs it: real files have millions of records.
    """

    __slots__ = ("obj", "path", "_name", "_index", "_id_field")

    def __init__(self, obj: Any, path: Path, name: str, index: int | None = None, id_field: str | None = None):
        self.obj, self.path, self._name, self._index, self._id_field = obj, path, name, index, id_field
        if not isinstance(obj, dict):
            raise FormatError(path, f"expected a JSON object, got {type(obj).__name__}", self.label)

    @property
    def label(self) -> str:
        if self._index is None:
            return self._name
        label = f"{self._name}[{self._index}]"
        if self._id_field is not None and isinstance(self.obj, dict) and self._id_field in self.obj:
            label += f" ({self._id_field} {self.obj[self._id_field]!r})"
        return label

    def error(self, field: str, problem: str) -> FormatError:
        return FormatError(self.path, problem, self.label, field)

    def _value(self, field: str, optional: bool) -> Any:
        if field not in self.obj:
            if optional:
                return None
            raise self.error(field, "missing")
        return self.obj[field]

    def _typed(self, field: str, optional: bool, ok: Callable[[Any], bool], expected: str) -> Any:
        """The field's value if ``ok(value)``; None for an absent or null optional field."""
        value = self._value(field, optional)
        if value is None and optional:
            return None
        if not ok(value):
            shown = type(value).__name__ if isinstance(value, (list, dict)) else repr(value)
            raise self.error(field, f"expected {expected}, got {shown}")
        return value

    def integer(self, field: str, optional: bool = False) -> int | None:
        return self._typed(field, optional, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")

    def number(self, field: str, optional: bool = False) -> float | None:
        return self._typed(field, optional, _is_number, "a number")

    def string(self, field: str, optional: bool = False) -> str | None:
        return self._typed(field, optional, lambda v: isinstance(v, str), "a string")

    def array(self, field: str, optional: bool = False) -> list | None:
        return self._typed(field, optional, lambda v: isinstance(v, list), "a list")

    def strings(self, field: str, optional: bool = False) -> list[str] | None:
        values = self.array(field, optional)
        if values is not None and not all(isinstance(v, str) for v in values):
            raise self.error(field, f"expected a list of strings, got {values!r}")
        return values

    def xywh(self, field: str) -> Box:
        """A ``[x, y, w, h]`` list of four numbers."""
        value = self._value(field, False)
        if not (isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)):
            raise self.error(field, f"expected [x, y, width, height] (4 numbers), got {value!r}")
        return Box(*value)

    def box_fields(self, x: str = "x", y: str = "y", w: str = "w", h: str = "h") -> Box:
        """A box stored as four separate number fields (Visual Genome)."""
        return Box(self.number(x), self.number(y), self.number(w), self.number(h))


INTEGER, NUMBER, STRING, LIST = (int,), (int, float), (str,), (list,)  # exact types: bool is no number
_EXPECTED = {INTEGER: "an integer", NUMBER: "a number", STRING: "a string", LIST: "a list"}


def record_values(obj: Any, spec: tuple[tuple[str, tuple[type, ...]], ...], path: Path, name: str, index: int, id_field: str | None = None) -> list:
    """The values of the fields ``spec`` names, each of one of its exact types; errors name the file,
    record and field. For the millions of records of real files: a Record (and its label) is only
    built when something is wrong, to say what."""
    if type(obj) is dict:
        try:
            values = [obj[field] for field, _ in spec]
        except KeyError:
            values = None
        if values is not None:
            for value, (_, types) in zip(values, spec):
                if type(value) not in types:
                    break
            else:
                return values
    rec = Record(obj, path, name, index, id_field)
    for field, types in spec:
        value = rec._value(field, False)
        if type(value) not in types:
            shown = type(value).__name__ if isinstance(value, (list, dict)) else repr(value)
            raise rec.error(field, f"expected {_EXPECTED[types]}, got {shown}")
    raise AssertionError("unreachable: the fast path accepts what the checks accept")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, Number)


def records(container: Any, key: str, path: Path, id_field: str | None = None) -> Iterator[Record]:
    """Iterate the JSON objects of ``container[key]`` as :class:`Record`, labelled ``key[i] (id …)``."""
    if not isinstance(container, dict):
        raise FormatError(path, f"expected a JSON object at the top level, got {type(container).__name__}")
    if key not in container:
        raise FormatError(path, "missing", field=key)
    items = container[key]
    if not isinstance(items, list):
        raise FormatError(path, f"expected a list, got {type(items).__name__}", field=key)
    yield from list_records(items, path, key, id_field)


def list_records(items: list, path: Path, name: str, id_field: str | None = None) -> Iterator[Record]:
    for i, obj in enumerate(items):
        yield Record(obj, path, name, i, id_field)


def top_level_list(data: Any, path: Path) -> list:
    if not isinstance(data, list):
        raise FormatError(path, f"expected a JSON list at the top level, got {type(data).__name__}")
    return data


def require_known_image(image_id: int, images: dict[int, Image], record: Record, field: str = "image_id") -> None:
    if image_id not in images:
        raise record.error(field, f"image id {image_id} is not in the file's images")


def claim_id(seen: set[int], value: int, record: Record, field: str, what: str) -> None:
    """Add ``value`` to the ids the file has used, or fail naming ``record`` if it is there already."""
    if value in seen:
        raise record.error(field, f"duplicate {what} {value!r} (an earlier record has it)")
    seen.add(value)
