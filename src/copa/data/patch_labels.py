"""Box -> patch labels (COPA §3.3), their bit-packed store, and the ``patch-labels`` stage.

COPA §3.3: "if there is an overlap between an image patch and a bounding box, it will be
assigned with label 1, otherwise, it will be assigned with label 0". The image is resized to a
square of ``image_size`` px (not aspect-preserving) and cut into a G x G grid of P-px patches,
G = image_size // P. The rule is X-VLM's public ``get_image_attns`` (dataset/pretrain_dataset.py),
in resized pixels, per axis::

    lo = min(floor(x / P), G - 1)
    hi = max(lo + 1, min(ceil((x + w) / P), G))      # exclusive

so an edge that only touches a patch boundary does not take the next patch, and a zero-width
box still gets one patch. Two additions: ``lo`` is also clamped at 0 (X-VLM's boxes are clipped
to the crop first; ours may reach past the image border), and edges within ``EDGE_TOL`` of a
boundary count as on it. For boxes of positive size that overlap the image this is exactly
"the patch and the box intersect with positive area" (tests/test_patch_labels.py checks it
against that definition). Labels are ``labels[m, i, j]`` for patch row i (y) and column j (x),
i.e. token ``i * G + j`` as in X-VLM.
"""

from __future__ import annotations

import textwrap
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from copa.config import PatchLabelParams
from copa.data.formats.records import FormatError
from copa.data.formats.xvlm import Elem, ImageAnnotations, iter_xvlm
from copa.data.images import read_rgb

# Box edges within this many resized px of a patch boundary count as on it: x and w are scaled
# separately, so x + w of a box that ends on a boundary can land an ulp past it and would
# otherwise take a whole extra patch row or column.
EDGE_TOL = 1e-6
CHUNK_CELLS = 1 << 22  # patch cells rasterised at once: bounds the temporaries (<= 32 MB)
BUILD_BATCH = 1 << 16  # boxes read before each rasterise + pack in build_store


def grid_size(image_size: int, patch_size: int) -> int:
    if patch_size <= 0 or image_size <= 0 or image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a positive multiple of patch_size {patch_size}")
    return image_size // patch_size


def resize_boxes(boxes: np.ndarray, widths: np.ndarray, heights: np.ndarray, image_size: int) -> np.ndarray:
    """(M, 4) xywh in each image's own pixels -> xywh in the square ``image_size`` resize."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    # Multiply before dividing: an integer coordinate on a patch boundary then maps exactly onto it.
    scale = np.stack([widths, heights, widths, heights], axis=1).astype(np.float64)
    return boxes * image_size / scale


def rasterise(boxes_xywh: np.ndarray, image_size: int, patch_size: int, min_overlap: float = 0.0) -> np.ndarray:
    """(M, 4) xywh boxes in resized px -> bool (M, G, G) patch labels.

    ``min_overlap == 0``: X-VLM's rule (module docstring). ``min_overlap > 0``: a patch counts
    only if the box covers at least that fraction of its area (no forced patch: a box smaller
    than the threshold gets none).
    """
    grid = grid_size(image_size, patch_size)
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in [0, 1], got {min_overlap}")
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2:] < 0).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"box {i} is not finite with non-negative width and height: {boxes[i].tolist()}")
    out = np.empty((len(boxes), grid, grid), dtype=bool)
    chunk = max(1, CHUNK_CELLS // (grid * grid))
    for start in range(0, len(boxes), chunk):
        b = boxes[start : start + chunk]
        if min_overlap == 0.0:
            rows = _span_mask(b[:, 1], b[:, 3], patch_size, grid)  # (m, G) over y
            cols = _span_mask(b[:, 0], b[:, 2], patch_size, grid)  # (m, G) over x
            np.logical_and(rows[:, :, None], cols[:, None, :], out=out[start : start + chunk])
        else:
            np.greater_equal(patch_coverage(b, image_size, patch_size), min_overlap * patch_size**2, out=out[start : start + chunk])
    return out


def patch_coverage(boxes_xywh: np.ndarray, image_size: int, patch_size: int) -> np.ndarray:
    """(M, 4) xywh boxes in resized px -> (M, G, G) px² of each patch that each box covers."""
    grid = grid_size(image_size, patch_size)
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    rows = _overlap(boxes[:, 1], boxes[:, 3], patch_size, grid)
    cols = _overlap(boxes[:, 0], boxes[:, 2], patch_size, grid)
    return rows[:, :, None] * cols[:, None, :]


def _span_mask(start: np.ndarray, length: np.ndarray, patch: int, grid: int) -> np.ndarray:
    """X-VLM's [lo, hi) patch range on one axis as a (m, G) mask; floor_divide is exact on floats."""
    lo = np.clip(np.floor_divide(start + EDGE_TOL, patch), 0, grid - 1)
    hi = -np.floor_divide(EDGE_TOL - (start + length), patch)  # ceil((x + w - tol) / P)
    hi = np.maximum(lo + 1, np.minimum(hi, grid))
    k = np.arange(grid)
    return (k >= lo[:, None]) & (k < hi[:, None])


def _overlap(start: np.ndarray, length: np.ndarray, patch: int, grid: int) -> np.ndarray:
    """(m, G) length of [start, start + length) inside each patch [kP, (k+1)P)."""
    edges = np.arange(grid + 1, dtype=np.float64) * patch
    inside = np.minimum((start + length)[:, None], edges[1:]) - np.maximum(start[:, None], edges[:-1])
    return np.maximum(inside, 0.0)


def pack(labels: np.ndarray) -> np.ndarray:
    """bool (M, G, G) -> uint8 (M, ceil(G*G / 8)), row-major bits."""
    return np.packbits(labels.reshape(len(labels), labels.shape[1] * labels.shape[2]), axis=1)


def unpack(bits: np.ndarray, grid: int) -> np.ndarray:
    """uint8 (..., ceil(G*G / 8)) -> bool (..., G, G)."""
    flat = np.unpackbits(bits, axis=-1, count=grid * grid)
    return flat.reshape(*bits.shape[:-1], grid, grid).astype(bool)


# --------------------------------------------------------------------------- store
@dataclass(eq=False)
class PatchLabelStore:
    """Bit-packed patch labels, one row per box, indexed by (source, record id)."""

    bits: np.ndarray  # uint8 (M, ceil(G*G / 8))
    source: np.ndarray  # uint8 (M,): index into ``sources``
    sources: tuple[str, ...]
    record_id: np.ndarray  # int64 (M,): the elem's id in its source file
    image_id: np.ndarray  # int64 (M,)
    image_size: int
    patch_size: int
    min_overlap: float
    # Rows sorted by (source, record_id), and those keys in that order, for binary-search lookup.
    _order: np.ndarray = field(init=False, repr=False)
    _sorted_source: np.ndarray = field(init=False, repr=False)
    _sorted_record_id: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._order = np.lexsort((self.record_id, self.source))
        self._sorted_source, self._sorted_record_id = self.source[self._order], self.record_id[self._order]
        src, rid = self._sorted_source, self._sorted_record_id
        dup = np.flatnonzero((src[1:] == src[:-1]) & (rid[1:] == rid[:-1]))
        if dup.size:
            i = self._order[dup[0]]
            raise ValueError(f"duplicate patch-label key: source {self.sources[self.source[i]]!r}, record id {self.record_id[i]}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def __len__(self) -> int:
        return len(self.bits)

    def labels(self, row: int) -> np.ndarray:
        return unpack(self.bits[row], self.grid)

    def row(self, source: str, record_id: int) -> int:
        if source not in self.sources:
            raise KeyError(f"no patch labels for source {source!r} (the store has {', '.join(self.sources) or 'none'})")
        code = self.sources.index(source)
        lo = np.searchsorted(self._sorted_source, code, "left")
        hi = np.searchsorted(self._sorted_source, code, "right")
        rids = self._sorted_record_id[lo:hi]
        i = int(np.searchsorted(rids, record_id))
        if i == len(rids) or rids[i] != record_id:
            raise KeyError(f"no patch labels for source {source!r}, record id {record_id}")
        return int(self._order[lo + i])

    def lookup(self, source: str, record_id: int) -> np.ndarray:
        """bool (G, G) labels of one box; KeyError naming the key if it is not in the store."""
        return self.labels(self.row(source, record_id))

    def save(self, path: Path) -> None:
        # np.savez_compressed is byte-stable: it adds members as ZipInfo(name), whose date is the
        # fixed 1980-01-01 (no clock time). Writing to an open file keeps numpy from appending
        # ".npz" to a path without it.
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez_compressed(
                f, bits=self.bits, source=self.source, sources=np.array(self.sources, dtype=str),
                record_id=self.record_id, image_id=self.image_id, image_size=np.int64(self.image_size),
                patch_size=np.int64(self.patch_size), min_overlap=np.float64(self.min_overlap),
            )

    @classmethod
    def load(cls, path: Path) -> PatchLabelStore:
        with np.load(path, allow_pickle=False) as z:
            missing = sorted(set(_KEYS) - set(z.files))
            if missing:
                raise ValueError(f"{path}: not a patch-label store, missing arrays {', '.join(missing)}")
            store = cls(
                z["bits"], z["source"], tuple(str(s) for s in z["sources"]), z["record_id"], z["image_id"],
                int(z["image_size"]), int(z["patch_size"]), float(z["min_overlap"]),
            )
        grid = grid_size(store.image_size, store.patch_size)
        row_bytes = (grid * grid + 7) // 8
        if store.bits.shape[1:] != (row_bytes,) or not len(store.source) == len(store.record_id) == len(store.image_id) == len(store):
            raise ValueError(f"{path}: array shapes disagree (bits {store.bits.shape}, {len(store.source)} sources, grid {grid})")
        return store


_KEYS = ("bits", "source", "sources", "record_id", "image_id", "image_size", "patch_size", "min_overlap")


def filtered_files(filtered_dir: Path) -> list[Path]:
    """The filter stage's ``<source>.jsonl`` files, sorted by name (the store's row order)."""
    files = sorted(Path(filtered_dir).glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{filtered_dir}: no filtered annotation files (*.jsonl)")
    return files


def iter_elems(filtered_dir: Path):
    """(file, image line, elem) in store row order; checks the fields the harness adds."""
    for path in filtered_files(filtered_dir):
        yield from _file_elems(path)


def _file_elems(path: Path):
    for item in iter_xvlm(path):
        record = f"image {item.image!r}"
        for name in ("image_id", "width", "height", "source"):
            if getattr(item, name) is None:
                raise FormatError(path, "missing (the filter stage writes it on every line)", record, name)
        for elem in item.elems:
            if elem.id is None:
                raise FormatError(path, "an elem has no record id", record, "elems.id")
            yield path, item, elem


@dataclass
class _FileLabels:
    """The rows of one filtered file: its sources (in order of appearance) and per-row arrays."""

    sources: list[str]
    codes: np.ndarray
    record_ids: np.ndarray
    image_ids: np.ndarray
    bits: np.ndarray


def _label_file(job: tuple[Path, PatchLabelParams]) -> _FileLabels:
    path, params = job
    sources: list[str] = []
    packed, codes, record_ids, image_ids = [], [], [], []
    batch: list[tuple[float, float, float, float, int, int]] = []

    def flush() -> None:
        b = np.array(batch, dtype=np.float64).reshape(-1, 6)
        boxes = resize_boxes(b[:, :4], b[:, 4], b[:, 5], params.image_size)
        packed.append(pack(rasterise(boxes, params.image_size, params.patch_size, params.min_overlap)))
        batch.clear()

    for _, item, elem in _file_elems(path):
        if item.source not in sources:
            sources.append(item.source)
        codes.append(sources.index(item.source))
        record_ids.append(elem.id)
        image_ids.append(item.image_id)
        batch.append((*elem.box.as_list(), item.width, item.height))
        if len(batch) == BUILD_BATCH:
            flush()
    flush()
    return _FileLabels(sources, np.array(codes, dtype=np.int64), np.array(record_ids, dtype=np.int64), np.array(image_ids, dtype=np.int64), np.concatenate(packed))


def build_store(filtered_dir: Path, params: PatchLabelParams, workers: int = 1) -> PatchLabelStore:
    """Rasterise every kept box of the filtered files (full image, no augmentation), ``workers``
    files at a time (separate processes; rows stay in file order, so the store is the same)."""
    grid_size(params.image_size, params.patch_size)
    jobs = [(path, params) for path in filtered_files(filtered_dir)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as executor:
            parts = list(executor.map(_label_file, jobs))
    else:
        parts = [_label_file(job) for job in jobs]
    sources: list[str] = []
    for part in parts:
        sources += [name for name in part.sources if name not in sources]
    if len(sources) > 256:
        raise ValueError(f"{filtered_dir}: more than 256 sources do not fit the uint8 source codes")
    codes = [np.array([sources.index(name) for name in part.sources], dtype=np.uint8)[part.codes] for part in parts]
    return PatchLabelStore(
        np.concatenate([p.bits for p in parts]), np.concatenate(codes), tuple(sources),
        np.concatenate([p.record_ids for p in parts]), np.concatenate([p.image_ids for p in parts]),
        params.image_size, params.patch_size, float(params.min_overlap),
    )


def summarise(store: PatchLabelStore) -> dict:
    """Box counts and the mean fraction of positive patches, overall and per source."""
    cells = store.grid * store.grid
    ones = np.bitwise_count(store.bits).sum(axis=1, dtype=np.int64)  # padding bits are 0
    per_source = {}
    for code, name in enumerate(store.sources):
        mask = store.source == code
        per_source[name] = {"boxes": int(mask.sum()), "mean_positive_fraction": round(float(ones[mask].mean() / cells), 6)}
    return {
        "boxes": len(store),
        "grid": store.grid,
        "image_size": store.image_size,
        "patch_size": store.patch_size,
        "min_overlap": store.min_overlap,
        "mean_positive_fraction": round(float(ones.mean() / cells), 6) if len(store) else 0.0,
        "boxes_without_positive_patch": int((ones == 0).sum()),
        "per_source": per_source,
    }


# --------------------------------------------------------------------------- stage
@dataclass(frozen=True, eq=False)
class LabelledImage:
    """One panel of the patch-label figure."""

    pixels: np.ndarray  # uint8 (S, S, 3): the image resized to image_size
    box: tuple[float, float, float, float]  # xywh in resized px
    labels: np.ndarray  # bool (G, G)
    title: str


def run_patch_labels(
    filtered_dir: Path, out_path: Path, params: PatchLabelParams, data_root: Path, seed: int, workers: int = 1
) -> tuple[dict, list[LabelledImage]]:
    """Build and save the store; returns :func:`summarise`'s dict (no paths in it, so the JSON the
    CLI writes is the same on every machine) and the panels of the check figure, which the caller
    draws (``copa.report.figures.patch_label_figure``: the data layer draws nothing)."""
    store = build_store(filtered_dir, params, workers)
    if not len(store):
        raise ValueError(f"{filtered_dir}: the filtered files hold no boxes")
    store.save(out_path)
    return summarise(store), figure_examples(store, filtered_dir, data_root, params.figure_examples, seed)


def figure_examples(store: PatchLabelStore, filtered_dir: Path, data_root: Path, count: int, seed: int) -> list[LabelledImage]:
    """``count`` boxes of the store drawn with a seeded rng, in row order."""
    rng = np.random.default_rng(seed)
    rows = set(rng.choice(len(store), size=min(count, len(store)), replace=False).tolist())
    picked: dict[int, tuple[ImageAnnotations, Elem]] = {}
    # A second pass over the files: the store keeps labels, not texts or image paths.
    for row, (path, item, elem) in enumerate(iter_elems(filtered_dir)):
        if row in rows:
            if (store.sources[store.source[row]], int(store.record_id[row])) != (item.source, elem.id):
                raise ValueError(f"{path}: changed since the store was built (row {row} is not {item.source} {elem.id})")
            picked[row] = (item, elem)
            if len(picked) == len(rows):
                break
    size = store.image_size
    examples = []
    for row in sorted(picked):
        item, elem = picked[row]
        pixels = np.asarray(read_rgb(Path(data_root) / item.image).resize((size, size), Image.Resampling.BICUBIC))
        box = resize_boxes(elem.box.as_list(), np.array([item.width]), np.array([item.height]), size)[0]
        title = textwrap.fill(elem.text or elem.caption, 30) + f"\n({item.source} {elem.id})"
        examples.append(LabelledImage(pixels, tuple(box.tolist()), store.labels(row), title))
    return examples
