"""The checks that need two parameter values (a size on the patch grid, heads dividing a width, a
location within the ViT's depth...), made after each value's own type and range."""

from __future__ import annotations

import typing
from typing import Any

from copa.config.errors import ParamsError, source_of
from copa.config.params import Params, vqa_scratch_image_size


# Where model.selection.location may point (copa.models.vit.VisionEncoder guards its direct callers the
# same way): TRIPS' text attention selects inside layer k (1..depth), every other method after it
# (1..depth - 1; none too: the ViT checks the location whatever the selector). These take one layer:
SELECTS_INSIDE_A_LAYER = ("text_attention",)
ONE_LOCATION = ("tpd", "oracle", "random")  # an architecture may take fewer: copa.train.architectures


def check_relations(params: Params) -> None:
    """The checks that need two values, after the ranges of each: refused in the same one-line form."""
    def refuse(key: str, value: Any, must: str) -> typing.NoReturn:
        raise ParamsError(f"{source_of(key, params.provenance)}: key '{key}' = {value}: must be {must}")

    patch = params.patch_labels.patch_size
    for key, size in (("patch_labels.image_size", params.patch_labels.image_size), ("finetune.vqa.image_size", params.finetune.vqa.image_size),
                      ("efficiency.image_size", params.efficiency.image_size), ("efficiency.memory.image_size", params.efficiency.memory.image_size)):
        if size is not None and size % patch:
            refuse(key, size, f"a multiple of patch_labels.patch_size ({patch})")
    model = params.model
    for width, heads in (("vision_dim", "vision_heads"), ("text_dim", "text_heads")):
        if getattr(model, width) % getattr(model, heads):
            refuse(f"model.{heads}", getattr(model, heads), f"a divisor of model.{width} ({getattr(model, width)})")
    selection, key = model.selection, "model.selection.location"
    location = list(selection.location)
    if not location or location != sorted(set(location)):
        refuse(key, location, "one or more layers, increasing, each once")
    inside = selection.method in SELECTS_INSIDE_A_LAYER
    last = model.vision_depth if inside else model.vision_depth - 1
    if location[-1] > last:
        refuse(key, location, f"layers in 1..{last}: {selection.method} selects {'inside' if inside else 'after'} layer k "
                              f"of model.vision_depth {model.vision_depth}")
    if len(location) > 1 and selection.method in ONE_LOCATION:
        refuse(key, location, f"one layer for {selection.method}")
    synth = params.synth
    for name in ("image_side", "objects_per_image"):
        low, high = getattr(synth, name)
        if low > high:
            refuse(f"synth.{name}", [low, high], "[min, max] with min <= max")
    for held_out, images, pool in (("coco", "coco_val2014", "COCO val2014"), ("flickr", "flickr30k", "Flickr30K")):
        val, test = getattr(synth.karpathy, f"{held_out}_val"), getattr(synth.karpathy, f"{held_out}_test")
        available = getattr(synth.images, images)
        if val + test > available:
            refuse(f"synth.karpathy.{held_out}_test", test, f"<= synth.images.{images} - synth.karpathy.{held_out}_val "
                                                            f"({available} - {val}): the Karpathy val and test images come from {pool}")
    for task in ("vqa", "captioning"):
        decoding = getattr(params.evaluate, task)
        if decoding.min_length > decoding.max_length:
            refuse(f"evaluate.{task}.min_length", decoding.min_length, f"<= evaluate.{task}.max_length ({decoding.max_length})")
    cider = params.finetune.captioning_cider
    if cider.baseline == "mean" and cider.samples < 2:
        refuse("finetune.captioning_cider.samples", cider.samples, ">= 2 with baseline mean (the mean reward of the other samples)")
    # the FiLM anchor's four stem convolutions stride 1 or 2 (copa.models.film.stem_strides guards its direct callers the same way)
    scratch_size, grid = vqa_scratch_image_size(params), params.vqa_scratch.grid
    if scratch_size % grid or (scratch_size // grid) not in (1, 2, 4, 8, 16):
        refuse("vqa_scratch.grid", grid,
               f"image size ({scratch_size} px) / 1, 2, 4, 8 or 16: four convolutions of stride 1 or 2 reach it")
    grounding = params.finetune.grounding
    if grounding.oracle_objects != "all" and grounding.perception != "oracle":
        refuse("finetune.grounding.oracle_objects", grounding.oracle_objects,
               "all unless finetune.grounding.perception is oracle (named chooses what the perfect image tokens show)")
    seeds = list(params.report.seeds)
    if not seeds or len(set(seeds)) < len(seeds):
        refuse("report.seeds", seeds, "one or more seeds, each once")
