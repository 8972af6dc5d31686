"""``copa filter``: object/region annotations -> the annotations Patch-Text Alignment trains on.

COPA (Appendix A) uses X-VLM's filtered annotations, whose rules (X-VLM Appendix A.1) are only
named: "1) invalid annotations (e.g. negative values for bounding boxes or boxes being outside of
the images); 2) boxes being too small (< 1%); 3) highly overlapped textual descriptions of
regions (> 75%), etc.". No script was released; this module is that stage, one image at a time,
and every dropped record is counted under one reason (and listed in ``dropped.tsv``).

Checks, in order (the first that applies is the record's reason):
1. the image: ``unknown_image`` (id not among the file's images), ``missing_image``,
   ``unreadable_image``, ``image_too_large`` (over PIL's decompression-bomb limit), ``image_size_mismatch``,
   ``image_too_small`` (:func:`copa.data.images.image_file_problem`; ``filter.image_check``);
2. ``unknown_category`` (COCO category id not in the file);
3. the box (:func:`copa.data.annotation_checks.box_defect`): non-finite, non-positive size,
   negative coordinates or outside the image by more than ``box_tolerance`` px (within it: the
   box is clipped to the image and kept), then ``too_small`` (< ``min_area_fraction``);
4. ``empty_text`` (empty class label or phrase after whitespace normalisation);
5. ``exact_duplicate``: same image, same text (case-insensitive) and same box as an earlier record;
6. regions only, ``near_duplicate``: word overlap with an earlier kept region of the image above
   ``near_duplicate.threshold`` (the earlier one, in file order, stays).
Output: one JSON-lines file per source in X-VLM's layout (:mod:`copa.data.formats.xvlm`).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from copa.config import FilterParams, XVLMSource
from copa.data.annotation_checks import check_box, near_duplicates, normalise_text
from copa.data.formats import coco, visual_genome, xvlm
from copa.data.formats.records import Box
from copa.data.images import FILE_PROBLEMS, image_file_problem
from copa.data.layout import DataLayout

IMAGE_PROBLEMS = ("unknown_image", *FILE_PROBLEMS)
DROP_REASONS = (
    *IMAGE_PROBLEMS,
    "unknown_category",
    "non_finite_box",
    "non_positive_size",
    "negative_coordinates",
    "outside_image",
    "too_small",
    "empty_text",
    "exact_duplicate",
    "near_duplicate",
)
DROPPED_FILE = "dropped.tsv"


@dataclass(slots=True)
class Candidate:
    record_id: int
    label: str  # class label (objects) or phrase (regions)
    box: Box
    attributes: tuple[str, ...] = ()
    known_category: bool = True


@dataclass(slots=True)
class ImageGroup:
    """The records of one image, as a source reader gives them."""

    image: str  # path relative to the data root (or absolute)
    image_id: int | None
    width: int | None  # None: unknown until the image file is opened (X-VLM files)
    height: int | None
    known: bool  # False: the image id is not among the source's images
    candidates: list[Candidate]


@dataclass
class SourceStats:
    file: str
    kind: str  # object | region
    records: int = 0
    kept: int = 0
    clipped: int = 0  # kept after cutting a box that stuck out by at most box_tolerance
    images_kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {
            "file": self.file, "kind": self.kind, "records": self.records, "kept": self.kept, "clipped": self.clipped,
            "images_kept": self.images_kept, "dropped": {r: self.dropped[r] for r in DROP_REASONS if self.dropped[r]},
        }


# --------------------------------------------------------------------------- sources
def _grouped(items: Iterable, image_of) -> dict[int, list]:
    groups: dict[int, list] = {}
    for item in items:
        groups.setdefault(image_of(item), []).append(item)
    return groups


def coco_groups(layout: DataLayout, split: str) -> Iterator[ImageGroup]:
    data = coco.read_instances(layout.coco_instances(split), layout.coco_images(split), check_files=False, check_references=False)
    for image_id, objects in _grouped(data.objects, lambda o: o.image_id).items():
        image = data.images.get(image_id)
        candidates = [
            Candidate(o.ann_id, data.categories[o.category_id].name if o.category_id in data.categories else "", o.box, (), o.category_id in data.categories)
            for o in objects
        ]
        yield _group(layout, image, image_id, candidates)


def vg_object_groups(layout: DataLayout) -> Iterator[ImageGroup]:
    """From attributes.json when present (the objects with their attributes), else objects.json."""
    images = visual_genome.read_image_data(layout.vg_image_data, layout.vg, check_files=False)
    with_attributes = layout.vg_attributes.exists()
    path = layout.vg_attributes if with_attributes else layout.vg_objects
    for image_id, objects in visual_genome.iter_objects(path, images, with_attributes, check_references=False):
        candidates = [Candidate(o.object_id, o.names[0] if o.names else "", o.box, o.attributes) for o in objects]
        yield _group(layout, images.get(image_id), image_id, candidates)


def vg_region_groups(layout: DataLayout) -> Iterator[ImageGroup]:
    images = visual_genome.read_image_data(layout.vg_image_data, layout.vg, check_files=False)
    for image_id, regions in visual_genome.iter_regions(layout.vg_regions, images, check_references=False):
        yield _group(layout, images.get(image_id), image_id, [Candidate(r.region_id, r.phrase, r.box) for r in regions])


def xvlm_groups(layout: DataLayout, source: XVLMSource) -> Iterator[ImageGroup]:
    """X-VLM's lines have no image id and usually no size: the size comes from the image file."""
    record_id = 0
    for item in xvlm.iter_xvlm(_resolve(layout.root, source.path)):
        candidates = []
        for elem in item.elems:
            candidates.append(Candidate(elem.id if elem.id is not None else record_id, elem.caption, elem.box, elem.attributes))
            record_id += 1
        yield ImageGroup(item.image, item.image_id, item.width, item.height, True, candidates)


def _group(layout: DataLayout, image, image_id: int, candidates: list[Candidate]) -> ImageGroup:
    if image is None:
        return ImageGroup(str(image_id), image_id, None, None, False, candidates)
    return ImageGroup(_relative(image.path, layout.root), image_id, image.width, image.height, True, candidates)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _resolve(root: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


@dataclass(frozen=True)
class SourceSpec:
    """One source to filter: its name in the outputs, the file it reads, its kind and its reader."""

    name: str
    file: str
    kind: str  # object | region
    reader: str  # coco_objects | vg_objects | vg_regions | xvlm
    argument: object = None  # the COCO split, or the XVLMSource

    def groups(self, layout: DataLayout) -> Iterator[ImageGroup]:
        if self.reader == "coco_objects":
            return coco_groups(layout, self.argument)
        if self.reader == "vg_objects":
            return vg_object_groups(layout)
        if self.reader == "vg_regions":
            return vg_region_groups(layout)
        return xvlm_groups(layout, self.argument)


def source_specs(layout: DataLayout, params: FilterParams) -> list[SourceSpec]:
    """Every source the params name, in the order of the report."""
    specs = []
    for name in params.sources:
        if name == "coco_objects":
            for split in params.coco_splits:
                key = name if len(params.coco_splits) == 1 else f"{name}_{split}"
                specs.append(SourceSpec(key, _relative(layout.coco_instances(split), layout.root), "object", name, split))
        elif name == "vg_objects":
            path = layout.vg_attributes if layout.vg_attributes.exists() else layout.vg_objects
            specs.append(SourceSpec(name, _relative(path, layout.root), "object", name))
        else:
            specs.append(SourceSpec(name, _relative(layout.vg_regions, layout.root), "region", name))
    specs += [SourceSpec(source.name, source.path, source.kind, "xvlm", source) for source in params.xvlm_files]
    return specs


# --------------------------------------------------------------------------- the rules
class ImageChecker:
    """Checks each image file once (``none`` | ``exists`` | ``header``), remembering the answer."""

    def __init__(self, root: Path, mode: str):
        self.root, self.mode, self.cache = root, mode, {}

    def __call__(self, group: ImageGroup) -> tuple[str | None, int | None, int | None]:
        """(problem or None, width, height): the size comes from the file when the group has none."""
        key = group.image
        if key not in self.cache:
            self.cache[key] = self._check(group)
        return self.cache[key]

    def _check(self, group: ImageGroup):
        if self.mode == "none" and group.width is not None:
            return None, group.width, group.height
        path = _resolve(self.root, group.image)
        if not path.is_file():
            return "missing_image", group.width, group.height
        if self.mode == "exists" and group.width is not None:
            return None, group.width, group.height
        problem, found = image_file_problem(path, None if group.width is None else (group.width, group.height))
        if problem is not None:
            return problem.reason, group.width, group.height
        return None, *found


def filter_group(group: ImageGroup, kind: str, params: FilterParams, checker: ImageChecker) -> tuple[list[xvlm.Elem], list[tuple[int, str]], int]:
    """(kept elems, (record id, reason) per dropped record, number of clipped boxes) of one image."""
    problem, width, height = ("unknown_image", None, None) if not group.known else checker(group)
    if problem is not None:
        return [], [(c.record_id, problem) for c in group.candidates], 0
    dropped, passing, clipped = [], [], 0
    seen: set = set()
    for c in group.candidates:
        if not c.known_category:
            dropped.append((c.record_id, "unknown_category"))
            continue
        defect, box = check_box(c.box, width, height, params.min_area_fraction, params.box_tolerance)
        if defect is not None:
            dropped.append((c.record_id, defect))
            continue
        label = normalise_text(c.label)
        if not label:
            dropped.append((c.record_id, "empty_text"))
            continue
        key = (label.lower(), box.x, box.y, box.w, box.h)
        if key in seen:
            dropped.append((c.record_id, "exact_duplicate"))
            continue
        seen.add(key)
        clipped += box is not c.box
        passing.append(xvlm.Elem(label, box, c.attributes, c.record_id, _text(label, c.attributes, kind, params)))
    if kind == "region" and len(passing) > 1:
        duplicate_of = near_duplicates([e.text for e in passing], params.near_duplicate.threshold, params.near_duplicate.measure)
        dropped += [(e.id, "near_duplicate") for e, d in zip(passing, duplicate_of) if d is not None]
        passing = [e for e, d in zip(passing, duplicate_of) if d is None]
    return passing, dropped, clipped


def _text(label: str, attributes: tuple[str, ...], kind: str, params: FilterParams) -> str:
    """Objects: the class label in the template (COPA §3.3), optionally after an attribute (X-VLM)."""
    if kind == "region":
        return label
    if params.prepend_attribute and attributes:
        label = f"{attributes[0]} {label}"
    return params.object_text_template.format(label=label)


# --------------------------------------------------------------------------- the stage
def filter_source(root: Path, params: FilterParams, out_dir: Path, spec: SourceSpec, position: int = 0, progress: bool = True) -> SourceStats:
    """Filter one source: writes ``<out_dir>/<name>.jsonl`` and its dropped records to a part file."""
    layout = DataLayout(Path(root))
    checker = ImageChecker(layout.root, params.image_check)
    st = SourceStats(spec.file, spec.kind)

    def kept_images(dropped_file) -> Iterator[xvlm.ImageAnnotations]:
        for group in tqdm(spec.groups(layout), desc=f"filter {spec.name}", unit="img", position=position, disable=not progress):
            kept, dropped, clipped = filter_group(group, spec.kind, params, checker)
            st.records += len(group.candidates)
            st.clipped += clipped
            for record_id, reason in dropped:
                st.dropped[reason] += 1
                dropped_file.write(f"{spec.name}\t{record_id}\t{group.image}\t{reason}\n")
            if kept:
                st.kept += len(kept)
                st.images_kept += 1
                width, height = checker(group)[1:] if group.width is None else (group.width, group.height)
                yield xvlm.ImageAnnotations(group.image, tuple(kept), None, group.image_id, width, height, spec.name)

    with open(_dropped_part(out_dir, spec), "w", encoding="utf-8") as dropped_file:
        xvlm.write_xvlm(out_dir / f"{spec.name}.jsonl", kept_images(dropped_file))
    assert st.records == st.kept + sum(st.dropped.values())  # every record is kept or has a reason
    return st


def _dropped_part(out_dir: Path, spec: SourceSpec) -> Path:
    return out_dir / f".{DROPPED_FILE}.{spec.name}"


def run_filter(root: Path, params: FilterParams, out_dir: Path, progress: bool = True, workers: int = 1) -> dict:
    """Filter every source the params name, ``workers`` sources at a time (separate processes: the
    files are the same for any number); writes ``<out_dir>/<source>.jsonl`` and ``dropped.tsv``,
    returns the report (per source: records, kept, clipped, dropped by reason)."""
    layout = DataLayout(Path(root))
    specs = source_specs(layout, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(root, params, out_dir, spec, i, progress) for i, spec in enumerate(specs)]
    if workers > 1 and len(specs) > 1:
        with ProcessPoolExecutor(min(workers, len(specs))) as executor:
            stats = list(executor.map(_filter_job, jobs))
    else:
        stats = [_filter_job(job) for job in jobs]
    with open(out_dir / DROPPED_FILE, "w", encoding="utf-8") as dropped_file:
        dropped_file.write("source\trecord_id\timage\treason\n")
        for spec in specs:
            part = _dropped_part(out_dir, spec)
            with open(part, encoding="utf-8") as f:
                shutil.copyfileobj(f, dropped_file)
            part.unlink()
    return {
        "root": str(root),
        "params": dataclasses.asdict(params),
        "sources": {spec.name: st.to_dict() for spec, st in zip(specs, stats)},
    }


def _filter_job(job: tuple) -> SourceStats:
    return filter_source(*job)
