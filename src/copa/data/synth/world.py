"""``copa synth``: generate the synthetic world under a data root, in the official formats.

Each image has its own random streams, derived from (seed, pool, index, purpose), so the same
seed gives byte-identical files, and changing e.g. the number of questions per image leaves
the images and captions untouched. Layout: :mod:`copa.data.layout`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Callable, Mapping

import numpy as np
from tqdm import tqdm

from copa.config import SynthParams
from copa.data.annotation_checks import words
from copa.data.formats import coco, karpathy, refcoco, reference_boxes, referents, visual_genome, vqa, web_pairs
from copa.data.formats.records import Box, Image
from copa.data.layout import DataLayout
from copa.data.synth import defects, language, ownership
from copa.data.synth.render import outline, render
from copa.data.synth.scene import CURVED_SHAPES, SHAPES, Scene, SceneObject, sample_scene

MANIFEST_VERSION = 1
# Image pools: name -> (first image id, domain). COCO ids are disjoint across splits, as COCO's are.
POOLS = {
    "coco_train2014": (1, "in_domain"),
    "coco_val2014": (500_001, "in_domain"),
    "coco_test2015": (900_001, "in_domain"),
    "vg": (1, "in_domain"),
    "flickr30k": (1_000_000_001, "in_domain"),
    "cc3m_train": (1, "web"),
    "cc3m_val": (1, "web"),
}
# Purposes of the per-image random streams.
SCENE, PIXELS, TEXT, QUESTIONS, REF_SPLIT = range(5)
CATEGORIES = [coco.Category(i + 1, shape, "curved" if shape in CURVED_SHAPES else "polygon") for i, shape in enumerate(SHAPES)]
CATEGORY_ID = {c.name: c.category_id for c in CATEGORIES}


@dataclass(frozen=True)
class Pictured:
    """An image of a pool: its id, file, and the scene drawn in it."""

    image: Image
    scene: Scene
    index: int


class World:
    def __init__(self, params: SynthParams, root: Path, progress: bool = True, workers: int = 1):
        self.params, self.layout, self.progress, self.workers = params, DataLayout(Path(root)), progress, workers
        self.clean_objects: dict[str, list[coco.CocoObject]] = {}  # COCO split -> objects without defects
        self.captions: dict[tuple[str, int], list[language.Text]] = {}  # (pool, index) -> captions, shared by COCO and Karpathy
        self.ann_ids: dict[tuple[int, Box], int] = {}  # (image id, box) -> ann id of the clean COCO objects
        self.referred: dict[str, list[referents.Referred]] = {"questions": [], "captions": [], "refs": []}  # the sidecar

    def rng(self, pool: str, index: int, purpose: int) -> np.random.Generator:
        return image_rng(self.params.seed, pool, index, purpose)

    # ------------------------------------------------------------------ images
    def draw_pool(self, pool: str, path_of: Callable[[int, int], Path], bar: tqdm, executor: Executor) -> list[Pictured]:
        first_id = POOLS[pool][0]
        jobs = [(self.params, pool, index, first_id + index, path_of(first_id + index, index)) for index in range(getattr(self.params.images, pool))]
        out = []
        for pictured in executor.map(_draw_one, jobs, chunksize=32):
            out.append(pictured)
            bar.update(1)
        return out

    def generate(self) -> dict:
        p, lay = self.params, self.layout
        total = sum(dataclasses.astuple(p.images))
        with (
            tqdm(total=total, desc="synthetic world: images", unit="img", disable=not self.progress) as bar,
            ProcessPoolExecutor(self.workers) if self.workers > 1 else _InProcess() as executor,
        ):
            coco_pools = {
                split: self.draw_pool(f"coco_{split}", lambda i, _, s=split: lay.coco_images(s) / coco.file_name(s, i), bar, executor)
                for split in ("train2014", "val2014", "test2015")
            }
            vg = self.draw_pool("vg", lambda i, _: lay.vg / visual_genome.IMAGE_FOLDER / f"{i}.jpg", bar, executor)
            flickr = self.draw_pool("flickr30k", lambda i, _: lay.flickr_images / f"{i}.jpg", bar, executor)
            web = {
                split: self.draw_pool(f"cc3m_{split}", lambda _, k, s=split: lay.cc3m / "images" / s / f"{k:08d}.jpg", bar, executor)
                for split in ("train", "val")
            }
        manifest = {
            "generator": "copa synth",
            "version": MANIFEST_VERSION,
            "params": dataclasses.asdict(p),
            "images": {pool: getattr(p.images, pool) for pool in POOLS},
            "defects": {},
        }
        manifest["defects"].update(self.write_coco(coco_pools))
        manifest["defects"].update(self.write_visual_genome(vg))
        manifest["counts"] = {
            **self.write_vqa(coco_pools),
            **self.write_refcoco(coco_pools["train2014"]),
            **self.write_karpathy(coco_pools, flickr),
            **self.write_web(web),
        }
        referents.write_referents(lay.referents, referents.Referents(**{kind: {r.text_id: r for r in found} for kind, found in self.referred.items()}))
        manifest[ownership.MANIFEST_FILES] = ownership.files_under(lay.root)  # what `copa synth --overwrite` may delete
        lay.manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        return manifest

    # ------------------------------------------------------------------ COCO
    def captions_of(self, pool: str, pic: Pictured) -> list[language.Text]:
        key = (pool, pic.index)
        if key not in self.captions:
            self.captions[key] = language.captions(pic.scene, self.rng(pool, pic.index, TEXT), self.params.captions_per_image)
        return self.captions[key]

    def refer(self, kind: str, text_id: int, pic: Pictured, objects: tuple[SceneObject, ...]) -> None:
        """Note in the sidecar the boxes (and COCO annotation ids, where there are) a text refers to."""
        boxes = tuple(referents.ReferredBox(o.box, self.ann_ids.get((pic.image.image_id, o.box))) for o in objects)
        self.referred[kind].append(referents.Referred(text_id, pic.image.image_id, self.relative(pic.image.path), boxes))

    def write_coco(self, pools: dict[str, list[Pictured]]) -> dict:
        lay, report = self.layout, {}
        ann_id, cap_id = 1, 1
        for split in ("train2014", "val2014"):
            pics = pools[split]
            objects, captions = [], []
            for pic in pics:
                for obj in pic.scene.objects:
                    polygon = outline(obj)
                    objects.append(coco.CocoObject(ann_id, pic.image.image_id, CATEGORY_ID[obj.shape], obj.box, _polygon_area(polygon), 0, (tuple(polygon),)))
                    self.ann_ids[(pic.image.image_id, obj.box)] = ann_id
                    ann_id += 1
                for text in self.captions_of(f"coco_{split}", pic):
                    captions.append(coco.Caption(cap_id, pic.image.image_id, text.text))
                    self.refer("captions", cap_id, pic, text.referents)
                    cap_id += 1
            images = [pic.image for pic in pics]
            path = lay.coco_instances(split)
            self.clean_objects[split] = objects
            if split == "train2014":  # the object file used for Patch-Text Alignment gets the defects
                injected, bad = self.inject_box_defects(objects, {p.image.image_id: p.image for p in pics}, "coco_objects", ann_id)
                report[self.relative(path)] = {"clean": len(objects), "injected": injected}
                objects, ann_id = objects + bad, ann_id + len(bad)
            coco.write_instances(path, images, CATEGORIES, objects, f"synthetic COCO instances {split}")
            coco.write_captions(lay.coco_captions(split), images, captions, f"synthetic COCO captions {split}")
        coco.write_image_info(lay.coco_image_info("test2015"), [p.image for p in pools["test2015"]], CATEGORIES, "synthetic COCO test2015")
        return report

    def defect_rng(self, stream: str) -> np.random.Generator:
        return np.random.default_rng([self.params.seed, 1 << 20, DEFECT_STREAMS.index(stream)])

    def inject_box_defects(self, clean: list, images: dict[int, Image], stream: str, next_id: int) -> tuple[dict, list]:
        """Copies of random clean records with one box defect each: (manifest entry, the copies)."""
        rng = self.defect_rng(stream)
        report, added = {}, []
        for kind in defects.BOX_DEFECT_KINDS:
            n = min(defects.defect_count(getattr(self.params.defects, kind), len(clean)), len(clean))
            ids = []
            for source_index in sorted(rng.choice(len(clean), size=n, replace=False)):
                source = clean[int(source_index)]
                image = images[source.image_id]
                added.append(source._replace(**{_ID_FIELD[type(source)]: next_id}, box=defects.corrupt_box(kind, source.box, image.width, image.height, rng)))
                ids.append(next_id)
                next_id += 1
            report[kind] = {"count": len(ids), "ids": ids}
        return report, added

    def inject_near_duplicates(self, clean: list[visual_genome.VGRegion], images: dict, next_id: int) -> tuple[dict, list]:
        """Re-worded copies of clean regions of 4+ distinct words (see defects.near_duplicate)."""
        rng = self.defect_rng("vg_near_duplicates")
        eligible = [r for r in clean if len(words(r.phrase)) >= 4]
        n = min(defects.defect_count(self.params.defects.near_duplicate_region, len(clean)), len(eligible))
        added, sources = [], {}
        for i in sorted(rng.choice(len(eligible), size=n, replace=False)):
            source = eligible[int(i)]
            image = images[source.image_id]
            text, box = defects.near_duplicate(source.phrase, source.box, image.width, image.height, rng)
            added.append(visual_genome.VGRegion(next_id, source.image_id, box, text))
            sources[str(next_id)] = source.region_id
            next_id += 1
        return {"count": len(added), "ids": [r.region_id for r in added], "sources": sources}, added

    # ------------------------------------------------------------------ Visual Genome
    def write_visual_genome(self, pics: list[Pictured]) -> dict:
        lay = self.layout
        images = [visual_genome.VGImage(p.image.image_id, p.image.path, p.image.width, p.image.height) for p in pics]
        by_id = {im.image_id: im for im in images}
        objects, regions = [], []
        for pic in pics:
            for obj in pic.scene.objects:
                objects.append(
                    visual_genome.VGObject(
                        len(objects) + 1, pic.image.image_id, obj.box, (obj.shape,), (f"{obj.shape}.n.01",), (obj.colour, obj.size, obj.texture)
                    )
                )
            for phrase in language.region_phrases(pic.scene, self.rng("vg", pic.index, TEXT)):
                regions.append(visual_genome.VGRegion(len(regions) + 1, pic.image.image_id, phrase.box, phrase.text))
        object_report, bad_objects = self.inject_box_defects(objects, by_id, "vg_objects", len(objects) + 1)
        region_report, bad_regions = self.inject_box_defects(regions, by_id, "vg_regions", len(regions) + 1)
        region_report[defects.NEAR_DUPLICATE], duplicates = self.inject_near_duplicates(regions, by_id, len(regions) + len(bad_regions) + 1)
        visual_genome.write_image_data(lay.vg_image_data, images)
        visual_genome.write_objects(lay.vg_objects, images, objects + bad_objects)
        visual_genome.write_attributes(lay.vg_attributes, images, objects + bad_objects)
        visual_genome.write_regions(lay.vg_regions, images, regions + bad_regions + duplicates)
        object_entry = {"clean": len(objects), "injected": object_report}
        return {
            self.relative(lay.vg_objects): object_entry,
            self.relative(lay.vg_attributes): object_entry,
            self.relative(lay.vg_regions): {"clean": len(regions), "injected": region_report},
        }

    def relative(self, path: Path) -> str:
        return path.relative_to(self.layout.root).as_posix()

    # ------------------------------------------------------------------ VQA v2
    def write_vqa(self, pools: dict[str, list[Pictured]]) -> dict:
        counts, question_id = {}, 1
        for split in ("train2014", "val2014", "test2015"):
            questions, answers = [], []
            for pic in pools[split]:
                rng = self.rng(f"coco_{split}", pic.index, QUESTIONS)
                for qa in language.questions(pic.scene, rng, self.params.questions_per_image):
                    human = language.human_answers(qa, rng, self.params.answer_noise)
                    most = max(sorted(set(human)), key=human.count)
                    questions.append(vqa.Question(question_id, pic.image.image_id, qa.question))
                    answers.append(vqa.Answers(question_id, pic.image.image_id, qa.question_type, qa.answer_type, most, tuple(human)))
                    self.refer("questions", question_id, pic, qa.referents)
                    question_id += 1
            vqa.write_questions(self.layout.vqa_questions(split), split, questions)
            # The official test split has no answers; the synthetic one writes them for local scoring.
            vqa.write_annotations(self.layout.vqa_annotations(split), split, answers)
            counts[f"vqa/{split}"] = {"questions": len(questions)}
        return counts

    # ------------------------------------------------------------------ RefCOCO+
    def write_refcoco(self, pics: list[Pictured]) -> dict:
        """Refs over COCO train2014 images with 2+ objects of one shape; split by image:
        testA = referred shapes that are curved, testB = polygons (RefCOCO+ splits people / objects)."""
        category_of = {o.ann_id: o.category_id for o in self.clean_objects["train2014"]}
        refs, used_images, ref_id = [], [], 0
        for pic in pics:
            rng = self.rng("coco_train2014", pic.index, REF_SPLIT)
            targets = [(o, language.referring_expressions(o, pic.scene)) for o in pic.scene.objects]
            targets = [(o, exprs) for o, exprs in targets if exprs]
            if not targets:
                continue
            # One referred shape per image, so that testA / testB follow it exactly.
            targets = [(o, exprs) for o, exprs in targets if o.shape == targets[0][0].shape][: self.params.refs_per_image]
            draw = rng.random()
            split = "train" if draw < 0.7 else "val" if draw < 0.8 else ("testA" if targets[0][0].shape in CURVED_SHAPES else "testB")
            for obj, exprs in targets:
                ann_id = self.ann_ids[(pic.image.image_id, obj.box)]
                refs.append(refcoco.Ref(ref_id, ann_id, pic.image.image_id, category_of[ann_id], split, tuple(exprs), obj.box))
                self.refer("refs", ref_id, pic, (obj,))
                ref_id += 1
            used_images.append(pic.image.image_id)
        used = set(used_images)
        objects = [o for o in self.clean_objects["train2014"] if o.image_id in used]
        images = [pic.image for pic in pics if pic.image.image_id in used]
        coco.write_instances(self.layout.refcoco_instances, images, CATEGORIES, objects, "synthetic RefCOCO+ instances")
        refcoco.write_refs(self.layout.refcoco_refs, refs)
        return {"refcoco+": {split: sum(r.split == split for r in refs) for split in refcoco.SPLITS}}

    # ------------------------------------------------------------------ Karpathy splits
    def write_karpathy(self, pools: dict[str, list[Pictured]], flickr: list[Pictured]) -> dict:
        k = self.params.karpathy
        coco_images = []
        for split, pics in (("train2014", pools["train2014"]), ("val2014", pools["val2014"])):
            for pic in pics:
                if split == "train2014":
                    role = "train"
                else:
                    role = "val" if pic.index < k.coco_val else "test" if pic.index < k.coco_val + k.coco_test else "restval"
                coco_images.append(
                    karpathy.KarpathyImage(len(coco_images), role, pic.image.path, tuple(t.text for t in self.captions_of(f"coco_{split}", pic)), pic.image.image_id)
                )
        karpathy.write_karpathy(self.layout.karpathy_coco, "coco", coco_images, self.layout.coco)
        flickr_images = []
        for pic in flickr:
            role = "test" if pic.index < k.flickr_test else "val" if pic.index < k.flickr_test + k.flickr_val else "train"
            flickr_images.append(karpathy.KarpathyImage(pic.index, role, pic.image.path, tuple(t.text for t in self.captions_of("flickr30k", pic))))
        karpathy.write_karpathy(self.layout.karpathy_flickr, "flickr30k", flickr_images, self.layout.flickr_images)
        return {
            "karpathy/coco": {role: sum(i.split == role for i in coco_images) for role in karpathy.SPLITS},
            "karpathy/flickr30k": {role: sum(i.split == role for i in flickr_images) for role in karpathy.SPLITS},
        }

    # ------------------------------------------------------------------ web pairs + oracle boxes
    def write_web(self, pools: dict[str, list[Pictured]]) -> dict:
        named = {}
        for split, pics in pools.items():
            pairs = []
            for pic in pics:
                text, mentions = language.web_caption(pic.scene, self.rng(f"cc3m_{split}", pic.index, TEXT))
                pairs.append(web_pairs.WebPair(pic.index + 1, text, pic.image.path))
                named[(split, pic.index)] = (text, mentions)
            web_pairs.write_web_pairs(self.layout.cc3m_tsv(split), pairs)
        train = pools["train"]
        rng = self.defect_rng("oracle_boxes")
        sample = sorted(rng.choice(len(train), size=min(self.params.oracle_pairs, len(train)), replace=False))
        reference = []
        for index in sample:
            pic = train[int(index)]
            text, mentions = named[("train", pic.index)]
            reference.append(
                reference_boxes.ReferencePair(
                    f"cc3m/train/{pic.index + 1}", self.relative(pic.image.path), text, pic.image.width, pic.image.height,
                    reference_boxes.ORACLE_SOURCE, self.oracle_boxes(pic, mentions, rng),
                )
            )
        reference_boxes.write_reference_boxes(self.layout.oracle_reference_boxes, reference)
        return {"cc3m": {split: len(pics) for split, pics in pools.items()}, "reference_boxes": {"oracle_pairs": len(reference)}}

    def oracle_boxes(self, pic: Pictured, mentions: list, rng: np.random.Generator) -> tuple[reference_boxes.DetectedBox, ...]:
        """The named objects' true boxes with detector-like noise: jitter, misses, false alarms."""
        noise, w, h = self.params.oracle_noise, pic.image.width, pic.image.height
        boxes = []
        for phrase, obj in mentions:
            if rng.random() < noise.miss_rate:
                continue
            b = obj.box
            dx0, dy0, dx1, dy1 = rng.uniform(-noise.jitter, noise.jitter, size=4) * (b.w, b.h, b.w, b.h)
            x0, y0 = max(0.0, b.x + dx0), max(0.0, b.y + dy0)
            x1, y1 = min(float(w), b.x + b.w + dx1), min(float(h), b.y + b.h + dy1)
            boxes.append(reference_boxes.DetectedBox(_rounded(Box(x0, y0, x1 - x0, y1 - y0)), round(float(rng.uniform(0.5, 0.95)), 3), phrase))
        for _ in range(int(rng.poisson(noise.false_rate))):
            side = float(rng.uniform(0.1, 0.3)) * min(w, h)
            x, y = float(rng.uniform(0, w - side)), float(rng.uniform(0, h - side))
            phrase = mentions[int(rng.integers(len(mentions)))][0]
            boxes.append(reference_boxes.DetectedBox(_rounded(Box(x, y, side, side)), round(float(rng.uniform(0.3, 0.6)), 3), phrase))
        return tuple(boxes)


def image_rng(seed: int, pool: str, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, list(POOLS).index(pool), index, purpose])


def scene_of(seed: int, image_side: tuple[int, int], objects_per_image: tuple[int, int], pool: str, index: int) -> Scene:
    """The scene of a pool's ``index``-th image: the world's files describe it, and it can be drawn again from them."""
    scene_rng = image_rng(seed, pool, index, SCENE)
    scene = sample_scene(scene_rng, image_side, objects_per_image, POOLS[pool][1])
    while not scene.objects:  # only in absurdly crowded settings
        scene = sample_scene(scene_rng, image_side, objects_per_image, POOLS[pool][1])
    return scene


def manifest_scene(params: Mapping, pool: str, image_id: int) -> Scene:
    """The scene of a pool's image ``image_id`` in the world whose manifest holds ``params`` (its "params")."""
    return scene_of(params["seed"], tuple(params["image_side"]), tuple(params["objects_per_image"]), pool, image_id - POOLS[pool][0])


def _draw_one(job: tuple) -> Pictured:
    """Sample, render and save one image (runs in a worker process: each image has its own streams)."""
    params, pool, index, image_id, path = job
    scene = scene_of(params.seed, params.image_side, params.objects_per_image, pool, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    render(scene, image_rng(params.seed, pool, index, PIXELS)).save(path, format="JPEG", quality=params.jpeg_quality)
    return Pictured(Image(image_id, path, scene.width, scene.height), scene, index)


class _InProcess:
    """The executor interface, serially in this process (workers=1: simplest to debug and profile)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def map(self, fn, items, chunksize: int = 1):
        return map(fn, items)


DEFECT_STREAMS = ("coco_objects", "vg_objects", "vg_regions", "vg_near_duplicates", "oracle_boxes")
_ID_FIELD = {coco.CocoObject: "ann_id", visual_genome.VGObject: "object_id", visual_genome.VGRegion: "region_id"}


def _rounded(box: Box) -> Box:
    return Box(*(round(float(v), 2) for v in box.as_list()))


def _polygon_area(flat: list[float]) -> float:
    """Shoelace area of a flattened polygon (coordinates in hundredths, as ``outline`` rounds them), as
    COCO's ``area`` of a polygon segmentation, rounded to hundredths.

    Exact in integers: a floating-point dot product sums in the order of the BLAS kernel the CPU selects
    (OpenBLAS's Haswell, SkylakeX and Nehalem kernels gave three demo worlds), so the world's bytes
    would depend on the machine."""
    xs, ys = [round(v * 100) for v in flat[0::2]], [round(v * 100) for v in flat[1::2]]
    twice = sum(x0 * y1 - x1 * y0 for x0, y0, x1, y1 in zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1]))
    return float(round(Fraction(abs(twice), 2 * 100 * 100), 2))


def generate_world(params: SynthParams, root: str | Path, progress: bool = True, workers: int = 1) -> dict:
    """Write the synthetic world under ``root`` (absent or empty); returns the manifest (also written
    there). ``workers`` processes draw the images; the files are the same for any number of workers.
    The world is drawn in a staging folder and moved to ``root`` once finished (copa.data.synth.ownership)."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"data root {root} is not an empty folder: the synthetic world is written only to a new or empty one")
    stage = ownership.clear_staging(root)
    manifest = World(params, stage, progress, workers).generate()
    ownership.publish(stage, root)
    return manifest
