"""``copa validate-data``: run every reader over a data root and summarise what it holds.

A source whose files are all absent is reported as absent (a real data root need not have
every dataset); a source that is present but malformed is reported with the reader's error,
which names the file, the record and the field. With a synthetic-world manifest in the root,
the injected defects are recounted from the files and compared with the manifest.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from copa.data.annotation_checks import box_defect, near_duplicate_ids
from copa.data.formats import coco, karpathy, refcoco, reference_boxes, visual_genome, vqa, web_pairs
from copa.data.formats.records import FormatError, load_json
from copa.data.layout import COCO_ANNOTATED_SPLITS, COCO_TEST_SPLIT, VQA_SPLITS, DataLayout


@dataclass
class SourceReport:
    source: str
    split: str
    status: str  # ok | absent | error
    images: int = 0
    annotations: int = 0  # objects, regions, questions, refs or pairs, as `kind` says
    kind: str = ""
    texts: int = 0
    error: str = ""
    dropped: dict[str, int] = field(default_factory=dict)  # records left out as unusable, by reason


@dataclass
class Validation:
    root: str
    sources: list[SourceReport] = field(default_factory=list)
    defects: dict = field(default_factory=dict)  # file -> {kind: {"manifest": n, "found": m}}
    defect_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(s.status == "error" for s in self.sources) and not self.defect_mismatches

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "ok": self.ok,
            "sources": [vars(s) for s in self.sources],
            "defects": self.defects,
            "defect_mismatches": self.defect_mismatches,
        }


class _Validator:
    def __init__(self, root: Path, check_files: bool):
        self.layout, self.check_files = DataLayout(root), check_files
        self.result = Validation(str(root))
        self.loaded: dict[str, object] = {}  # what the defect recount needs

    def run(self, source: str, split: str, paths: Iterable[Path], read: Callable[[], SourceReport]) -> None:
        paths = list(paths)
        if not any(p.exists() for p in paths):
            self.result.sources.append(SourceReport(source, split, "absent"))
            return
        try:
            report = read()
        except FormatError as exc:
            report = SourceReport(source, split, "error", error=str(exc))
        self.result.sources.append(report)

    def validate(self) -> Validation:
        lay = self.layout
        for split in COCO_ANNOTATED_SPLITS:
            self.run("coco instances", split, [lay.coco_instances(split)], lambda s=split: self.coco_instances(s))
            self.run("coco captions", split, [lay.coco_captions(split)], lambda s=split: self.coco_captions(s))
        self.run("coco image info", COCO_TEST_SPLIT, [lay.coco_image_info(COCO_TEST_SPLIT)], self.coco_image_info)
        self.run("visual genome", "all", [lay.vg_image_data, lay.vg_objects, lay.vg_regions], self.visual_genome)
        for split in VQA_SPLITS:
            self.run("vqa v2", split, [lay.vqa_questions(split)], lambda s=split: self.vqa(s))
        self.run("refcoco+", "all", [lay.refcoco_refs, lay.refcoco_instances], self.refcoco)
        self.run("karpathy coco", "all", [lay.karpathy_coco], lambda: self.karpathy(lay.karpathy_coco, lay.coco))
        self.run("karpathy flickr30k", "all", [lay.karpathy_flickr], lambda: self.karpathy(lay.karpathy_flickr, lay.flickr_images))
        for split in ("train", "val"):
            self.run("cc3m web pairs", split, [lay.cc3m_tsv(split)], lambda s=split: self.web(s))
        self.run("reference boxes", "oracle", [lay.oracle_reference_boxes], self.reference)
        if lay.manifest.exists():
            try:
                self.recount_defects()
            except FormatError as exc:  # an unreadable manifest
                self.result.defect_mismatches.append(str(exc))
        return self.result

    # ------------------------------------------------------------------ one reader each
    def coco_instances(self, split: str) -> SourceReport:
        data = coco.read_instances(self.layout.coco_instances(split), self.layout.coco_images(split), self.check_files)
        self.loaded[f"coco_{split}"] = data
        return SourceReport("coco instances", split, "ok", len(data.images), len(data.objects), "objects")

    def coco_captions(self, split: str) -> SourceReport:
        data = coco.read_captions(self.layout.coco_captions(split), self.layout.coco_images(split), self.check_files)
        return SourceReport("coco captions", split, "ok", len(data.images), len(data.captions), "captions", len(data.captions))

    def coco_image_info(self) -> SourceReport:
        images = coco.read_image_info(self.layout.coco_image_info(COCO_TEST_SPLIT), self.layout.coco_images(COCO_TEST_SPLIT), self.check_files)
        return SourceReport("coco image info", COCO_TEST_SPLIT, "ok", len(images))

    def visual_genome(self) -> SourceReport:
        lay = self.layout
        images = visual_genome.read_image_data(lay.vg_image_data, lay.vg, self.check_files)
        objects = visual_genome.read_objects(lay.vg_objects, images)
        attributes = visual_genome.read_attributes(lay.vg_attributes, images) if lay.vg_attributes.exists() else []
        regions = visual_genome.read_regions(lay.vg_regions, images)
        self.loaded.update(vg_images=images, vg_objects=objects, vg_attributes=attributes, vg_regions=regions)
        return SourceReport("visual genome", "all", "ok", len(images), len(objects) + len(regions), "objects+regions", len(regions))

    def vqa(self, split: str) -> SourceReport:
        known = None
        if split in COCO_ANNOTATED_SPLITS and f"coco_{split}" in self.loaded:
            known = set(self.loaded[f"coco_{split}"].images)
        data = vqa.read_split(self.layout.vqa, split, known)
        answers = 0 if data.answers is None else sum(len(a.answers) for a in data.answers.values())
        return SourceReport("vqa v2", split, "ok", len({q.image_id for q in data.questions}), answers, "human answers", len(data.questions))

    def refcoco(self) -> SourceReport:
        data = refcoco.read_refcoco(self.layout.refcoco, self.layout.coco_images("train2014"), self.check_files)
        by_split = Counter(r.split for r in data.refs)
        split = " ".join(f"{s}:{by_split[s]}" for s in refcoco.SPLITS)
        return SourceReport("refcoco+", split, "ok", len(data.instances.images), len(data.refs), "refs", sum(len(r.sentences) for r in data.refs),
                            dropped={reason: len(ids) for reason, ids in sorted(data.dropped.items())})

    def karpathy(self, path: Path, image_dir: Path) -> SourceReport:
        name, images = karpathy.read_karpathy(path, image_dir, self.check_files)
        by_split = Counter(i.split for i in images)
        split = " ".join(f"{s}:{by_split[s]}" for s in karpathy.SPLITS)
        return SourceReport(f"karpathy {name}", split, "ok", len(images), sum(len(i.sentences) for i in images), "sentences", sum(len(i.sentences) for i in images))

    def web(self, split: str) -> SourceReport:
        pairs = web_pairs.read_web_pairs(self.layout.cc3m_tsv(split), self.check_files)
        return SourceReport("cc3m web pairs", split, "ok", len(pairs), len(pairs), "pairs", len(pairs))

    def reference(self) -> SourceReport:
        pairs = reference_boxes.read_reference_boxes(self.layout.oracle_reference_boxes, self.layout.root if self.check_files else None)
        return SourceReport("reference boxes", "oracle", "ok", len(pairs), sum(len(p.boxes) for p in pairs), "boxes", len(pairs))

    # ------------------------------------------------------------------ manifest recount
    def recount_defects(self) -> None:
        manifest = load_json(self.layout.manifest)
        found: dict[str, Counter] = {}
        if "coco_train2014" in self.loaded:
            data = self.loaded["coco_train2014"]
            found[self.relative(self.layout.coco_instances("train2014"))] = _box_defects((o.box, data.images[o.image_id]) for o in data.objects)
        if "vg_images" in self.loaded:
            images = self.loaded["vg_images"]
            objects = _box_defects((o.box, images[o.image_id]) for o in self.loaded["vg_objects"])
            found[self.relative(self.layout.vg_objects)] = objects
            if self.loaded["vg_attributes"]:
                found[self.relative(self.layout.vg_attributes)] = _box_defects((o.box, images[o.image_id]) for o in self.loaded["vg_attributes"])
            regions = self.loaded["vg_regions"]
            counts = _box_defects((r.box, images[r.image_id]) for r in regions)
            valid = [r for r in regions if box_defect(r.box, images[r.image_id].width, images[r.image_id].height) is None]
            counts["near_duplicate_region"] = len(near_duplicate_ids([(r.region_id, r.image_id, r.phrase) for r in valid]))
            found[self.relative(self.layout.vg_regions)] = counts
        for file, entry in manifest.get("defects", {}).items():
            if file not in found:
                # An absent file is already reported by its source (absent is not an error: --require-all).
                if (self.layout.root / file).exists():
                    self.result.defect_mismatches.append(f"{file}: in the manifest but not read")
                continue
            self.result.defects[file] = {}
            for kind, injected in entry["injected"].items():
                self.result.defects[file][kind] = {"manifest": injected["count"], "found": found[file][kind]}
                if injected["count"] != found[file][kind]:
                    self.result.defect_mismatches.append(f"{file}: {kind}: manifest says {injected['count']}, files have {found[file][kind]}")

    def relative(self, path: Path) -> str:
        return path.relative_to(self.layout.root).as_posix()


def _box_defects(boxes_and_images) -> Counter:
    return Counter(kind for box, image in boxes_and_images if (kind := box_defect(box, image.width, image.height)) is not None)


def validate_data_root(root: str | Path, check_files: bool = True) -> Validation:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    result = _Validator(root, check_files).validate()
    if all(s.status == "absent" for s in result.sources):  # a real root lacks some sources, never all: a wrong folder
        raise FileNotFoundError(f"data root {root} holds none of the sources' files (copa.data.layout): is it the data root?")
    return result


def format_summary(result: Validation) -> str:
    lines = [f"data root: {result.root}", f"{'source':<20} {'split':<36} {'status':<7} {'images':>7} {'annotations':>12}  {'texts':>7}"]
    for s in result.sources:
        lines.append(f"{s.source:<20} {s.split:<36} {s.status:<7} {s.images:>7} {s.annotations:>12}  {s.texts:>7}  {s.kind}".rstrip())
        if s.error:
            lines.append(f"    {s.error}")
        if s.dropped:
            lines.append(f"    dropped as unusable: {', '.join(f'{reason} {n}' for reason, n in s.dropped.items())}")
    if result.defects:
        lines.append("injected defects (manifest / recounted from the files):")
        for file, kinds in result.defects.items():
            cells = ", ".join(f"{k} {v['manifest']}/{v['found']}" for k, v in kinds.items())
            lines.append(f"    {file}: {cells}")
    for problem in result.defect_mismatches:
        lines.append(f"    MISMATCH {problem}")
    lines.append("valid" if result.ok else "INVALID: see the errors above")
    return "\n".join(lines)


def write_json(result: Validation, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
