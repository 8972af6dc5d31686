"""Held-out evaluation sets: the Karpathy test (or val) images, which pretraining never sees.

:func:`image_text_pairs` leaves every Karpathy val/test image out of pretraining (ALBEF, X-VLM
do the same), so these images can measure what a pretrained checkpoint learnt:
- :func:`karpathy_retrieval_set`: the images of a split and their captions, for ITC retrieval
  (COCO or Flickr30K, the downstream retrieval sets);
- :func:`heldout_object_samples`: the COCO boxes of the same images, passed through the filter
  stage's rules (COPA Appendix A) and worded with its template, each box an example, for the
  detector's patch precision / recall against patch labels (PTA's targets);
- :func:`heldout_attributes`: what the linear probes (copa.eval.linear_probe) predict of those
  images and boxes;
- :func:`grounding_words`: the word classes whose words the MLM grounding probe masks
  (copa.eval.word_grounding).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from copa.config import FilterParams
from copa.data.filtering import ImageChecker, coco_groups, filter_group
from copa.data.formats import coco, karpathy
from copa.data.formats.records import FormatError
from copa.data.layout import COCO_ANNOTATED_SPLITS, DataLayout
from copa.data.formats.records import load_json
from copa.data.pretrain_data import ObjectElem, ObjectImage, Pair, text_key
from copa.data.synth.meaning import read_caption
from copa.data.synth.world import POOLS, manifest_scene

HELDOUT_SPLITS = ("val", "test")
TRAIN_SPLITS = ("train", "restval")  # Karpathy's training images (restval: COCO val2014 images beyond val/test)


@dataclass(frozen=True)
class RetrievalSet:
    images: tuple[Path, ...]
    texts: tuple[str, ...]
    text_image: tuple[int, ...]  # index in ``images`` of the image each text describes
    # per text, every image it is true of (its own among them), where the world says: a synthetic
    # world's captions read against its scenes (:func:`caption_fits`); None for real data
    true_of: tuple[frozenset[int], ...] | None = None


def _karpathy_images(layout: DataLayout, dataset: str, split: str) -> list[karpathy.KarpathyImage]:
    if split not in HELDOUT_SPLITS:
        raise ValueError(f"held-out split must be one of {', '.join(HELDOUT_SPLITS)}, got {split!r}")
    return karpathy_images(layout, dataset, (split,))


def karpathy_images(layout: DataLayout, dataset: str, splits: tuple[str, ...]) -> list[karpathy.KarpathyImage]:
    """The images of the Karpathy ``splits`` of COCO or Flickr30K, in file order."""
    if dataset == "coco":
        path, image_dir = layout.karpathy_coco, layout.coco
    elif dataset == "flickr30k":
        path, image_dir = layout.karpathy_flickr, layout.flickr_images
    else:
        raise ValueError(f"unknown Karpathy dataset {dataset!r}: coco or flickr30k")
    _, images = karpathy.read_karpathy(path, image_dir, check_files=False)
    chosen = [im for im in images if im.split in splits]
    if not chosen:
        raise FormatError(path, f"no image in the Karpathy {' / '.join(splits)} split")
    return chosen


def karpathy_retrieval_set(layout: DataLayout, dataset: str = "coco", split: str = "test") -> RetrievalSet:
    images = _karpathy_images(layout, dataset, split)
    texts, text_image = [], []
    for index, image in enumerate(images):
        texts += image.sentences
        text_image += [index] * len(image.sentences)
    true_of = caption_fits(layout, dataset, images, texts, text_image) if layout.manifest.is_file() else None
    return RetrievalSet(tuple(im.path for im in images), tuple(texts), tuple(text_image), true_of)


def caption_fits(layout: DataLayout, dataset: str, images: list[karpathy.KarpathyImage], texts: list[str],
                 text_image: list[int]) -> tuple[frozenset[int], ...]:
    """Per caption, the images of ``images`` (a synthetic world's Karpathy COCO or Flickr30K images)
    whose scenes it is true of (copa.data.synth.meaning.read_caption; scenes drawn again from the
    manifest's seed). The world's captions are short: some are true of other images than their own,
    and a "negative" pair or a retrieval miss that the caption is true of is no error of the model. A
    caption that is not true of its own image is an error naming it."""
    params = load_json(layout.manifest)["params"]
    if dataset == "coco":
        scenes = [manifest_scene(params, f"coco_{image.path.parent.name}", image.cocoid) for image in images]
    else:  # Flickr30K's Karpathy imgid is the image's index in the world's flickr30k pool
        scenes = [manifest_scene(params, "flickr30k", POOLS["flickr30k"][0] + image.imgid) for image in images]
    source = layout.karpathy_coco if dataset == "coco" else layout.karpathy_flickr
    fits = []
    for text, own in zip(texts, text_image):
        try:
            reading = read_caption(text)
        except ValueError as exc:
            raise ValueError(f"{source}: image {images[own].path.name}: {exc}") from None
        fits.append(frozenset(i for i, scene in enumerate(scenes) if reading(scene)))
        if own not in fits[-1]:
            raise ValueError(f"{source}: caption {text!r} is not true of its image {images[own].path.name} (a world written by "
                             f"other code than this one? regenerate it)")
    return tuple(fits)


def karpathy_training_pairs(layout: DataLayout, dataset: str) -> tuple[list[Pair], list[int]]:
    """Every caption of the Karpathy train (+ restval) images, with its image's index."""
    pairs, image_ids = [], []
    for index, image in enumerate(karpathy_images(layout, dataset, TRAIN_SPLITS)):
        pairs += [Pair(image.path, text, dataset) for text in image.sentences]
        image_ids += [index] * len(image.sentences)
    return pairs, image_ids


@dataclass(frozen=True)
class HeldoutObjects:
    samples: list[ObjectImage]  # one per image, with its kept boxes as elems (each one is an example)
    records: int  # boxes of the split's images in the instance files
    dropped: dict[str, int]  # reason -> count (the filter stage's reasons)
    coco_ids: tuple[tuple[str, int], ...]  # (COCO split, image id) of each sample


def heldout_object_samples(layout: DataLayout, params: FilterParams, split: str = "test") -> HeldoutObjects:
    """Every COCO box of the Karpathy ``split`` images that the filter rules keep, grouped by image,
    text from the filter's template ("This is a {label}.")."""
    wanted = {im.path for im in _karpathy_images(layout, "coco", split)}
    checker = ImageChecker(layout.root, params.image_check)
    samples, coco_ids, records, dropped = [], [], 0, Counter()
    for coco_split in COCO_ANNOTATED_SPLITS:
        if not layout.coco_instances(coco_split).exists():
            continue
        for group in coco_groups(layout, coco_split):
            path = layout.root / group.image
            if path not in wanted:
                continue
            kept, rejected, _ = filter_group(group, "object", params, checker)
            records += len(group.candidates)
            dropped.update(reason for _, reason in rejected)
            if kept:
                samples.append(ObjectImage(path, group.width, group.height, tuple(ObjectElem("coco_objects", e.id, e.text, e.box) for e in kept)))
                coco_ids.append((coco_split, group.image_id))
    if not samples:
        raise ValueError(f"{layout.root}: no COCO box on the Karpathy {split!r} images (instances_*.json)")
    return HeldoutObjects(samples, records, dict(sorted(dropped.items())), tuple(coco_ids))


@dataclass(frozen=True)
class HeldoutAttributes:
    """Labels of the held-out images and boxes for the linear probes, aligned with
    ``HeldoutObjects.samples``: ``objects[i][j]`` of sample i's elem j, ``images[i]`` of image i."""

    source: str  # where the labels come from (see heldout_attributes)
    objects: tuple[dict[str, str], ...]  # per sample: a tuple of per-box dicts (attribute -> value)
    images: tuple[dict[str, str], ...]


def heldout_attributes(layout: DataLayout, objects: HeldoutObjects) -> HeldoutAttributes:
    """What the world says of each held-out box and image.

    Every data root: a box's ``shape`` is its COCO category (as its text, the filter's template of
    the category, "This is a circle."), an image's ``objects`` the number of its kept boxes. The synthetic world
    also gives a box's ``colour`` and an image's ``background``: its scenes are drawn again from
    the manifest's seed (copa.data.synth.world.manifest_scene) and each box matched to the scene's
    object with that exact box, as copa.data.synth.ambiguity checks the files against the scenes.
    """
    manifest = load_json(layout.manifest) if layout.manifest.is_file() else None
    per_image, per_box = [], []
    for sample, (split, image_id) in zip(objects.samples, objects.coco_ids):
        boxes = [{"shape": text_key(elem.text)} for elem in sample.elems]
        image = {"objects": str(len(sample.elems))}
        if manifest is not None:
            scene = manifest_scene(manifest["params"], f"coco_{split}", image_id)
            by_box = {obj.box: obj for obj in scene.objects}
            for labels, elem in zip(boxes, sample.elems):
                if elem.box not in by_box:
                    raise ValueError(f"{layout.manifest}: COCO {split} image {image_id} has a box {elem.box} that its scene does not draw")
                labels["colour"] = by_box[elem.box].colour
            image["background"] = scene.background
        per_box.append(tuple(boxes))
        per_image.append(image)
    source = "COCO categories + synthetic scenes (manifest)" if manifest is not None else "COCO categories"
    return HeldoutAttributes(source, tuple(per_box), tuple(per_image))


def grounding_words(layout: DataLayout, attributes: HeldoutAttributes) -> dict[str, tuple[str, ...]]:
    """Word classes for the MLM grounding probe: the COCO category names (both annotated splits) and,
    where the world says so, the colours of the held-out boxes (``heldout_attributes``)."""
    names: set[str] = set()
    for split in COCO_ANNOTATED_SPLITS:
        path = layout.coco_instances(split)
        if path.is_file():
            names.update(c.name.lower() for c in coco.read_instances(path, layout.coco_images(split), check_files=False,
                                                                      check_references=False).categories.values())
    colours = {box["colour"] for boxes in attributes.objects for box in boxes if "colour" in box}
    return {"category": tuple(sorted(names)), **({"colour": tuple(sorted(colours))} if colours else {})}
