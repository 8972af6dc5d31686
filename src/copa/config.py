"""Typed experiment parameters, loaded once at the boundary from params/.

Resolution order (later wins): ``params/base.yaml`` < ``params/profiles/<profile>.yaml`` <
``--set key.path=value`` overrides. Every value is checked against the dataclasses below:
an unknown key, a wrong type or a number out of its :class:`Range` (declared beside its field;
the checks that need two values in ``_check_relations``) raises :class:`ParamsError` naming the
file and the key, so a typo never silently falls back to a default. The dataclasses are the
single definition of the parameters; ``workflow/schemas/`` only validates the Snakemake
run-control config.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import yaml

DEFAULT_PARAMS_DIR = Path("params")
BASE_FILE = "base.yaml"
PROFILES_DIR = "profiles"
OVERRIDE_SOURCE = "--set"
# Sections a training stage does not read: editing them does not block resuming it
# (EngineConfig.resume_ignores). Fine-tuning reads neither the inference settings, nor the
# cost protocol, nor Figure 5's reference boxes; pretraining, in addition, none of the
# fine-tuning settings.
INFERENCE_SECTIONS = ("evaluate", "efficiency", "reference_boxes")
DOWNSTREAM_SECTIONS = ("finetune", *INFERENCE_SECTIONS)


class ParamsError(ValueError):
    """A parameter file or override is malformed; the message names the source and key."""


# --------------------------------------------------------------------------- ranges
INT_LIMIT = 2**63  # every integer parameter fits in 64 bits (torch and numpy take no more)


@dataclass(frozen=True)
class Range:
    """The values a numeric parameter may take, declared beside its field
    (``Annotated[float, Range(gt=0, le=1)]``) and checked while the params are built. Whatever
    the bounds, a float must be finite and an integer fit in 64 bits."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def admits(self, value: float) -> bool:
        within = -INT_LIMIT <= value < INT_LIMIT if isinstance(value, int) else math.isfinite(value)
        return (within and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def words(self, kind: type) -> str:
        """The range as error messages say it: 'in (0, 1]', '> 0 and finite', '>= 1 and < 2**63'."""
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else ""
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else ""
        if low and high:
            return f"in {low}, {high}"
        if kind is float:
            limits = ["finite"]
        else:  # the 64-bit side(s) the declared bound leaves open
            limits = [w for w, open_side in ((">= -2**63", not low), ("< 2**63", not high)) if open_side]
        ops = {"[": ">=", "(": ">", "]": "<=", ")": "<"}
        declared = [f"{ops[low[0]]} {low[1:]}"] if low else [f"{ops[high[-1]]} {high[:-1]}"] if high else []
        return " and ".join(declared + limits)


# The ranges most parameters share.
Count = Annotated[int, Range(ge=0)]  # sizes where 0 means none (a queue, warm-up steps, an empty split)
PositiveInt = Annotated[int, Range(ge=1)]  # epochs, steps, batch sizes, widths, depths, heads, lengths
Seed = Annotated[int, Range(ge=0)]  # numpy's seed sequences refuse negative entropy
LearningRate = Annotated[float, Range(gt=0)]
NonNegative = Annotated[float, Range(ge=0)]  # weight decay, loss weights, a tolerance in px
Fraction = Annotated[float, Range(ge=0, le=1)]  # probabilities, rates, shares, thresholds of scores in [0, 1]
KeepRatio = Annotated[float, Range(gt=0, le=1)]  # share of the patches a selector keeps; 1: all (COPA's 'w/o TPD')


# --------------------------------------------------------------------------- parameter tree
@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "real"]
    root: str  # data root holding the official dataset layouts (see docs in copa.data.layout)


@dataclass(frozen=True)
class SynthSplitSizes:
    """Number of images written per split of the synthetic world."""

    coco_train2014: Count
    coco_val2014: Count
    coco_test2015: Count
    vg: Count
    cc3m_train: Count
    cc3m_val: Count
    flickr30k: Count


@dataclass(frozen=True)
class KarpathySizes:
    """Images held out by the Karpathy split files (taken from COCO val2014 / Flickr30K)."""

    coco_val: Count
    coco_test: Count
    flickr_val: Count
    flickr_test: Count


@dataclass(frozen=True)
class DefectRates:
    """Defective records injected into the object/region files, as a fraction of clean records."""

    negative_coordinates: Fraction
    outside_image: Fraction
    too_small: Fraction
    near_duplicate_region: Fraction


@dataclass(frozen=True)
class OracleBoxNoise:
    """Detector-like noise on the synthetic world's oracle reference boxes (Figure 5 stand-in)."""

    jitter: Fraction  # box corners move by up to this fraction of the box side
    miss_rate: Fraction  # probability that a named object gets no box
    false_rate: NonNegative  # expected spurious boxes per pair


@dataclass(frozen=True)
class SynthParams:
    seed: Seed
    image_side: tuple[PositiveInt, PositiveInt]  # each image's width and height are drawn in [min, max]
    objects_per_image: tuple[PositiveInt, PositiveInt]  # a scene with no object is drawn again
    captions_per_image: PositiveInt
    questions_per_image: Count  # 0: the world writes no VQA question
    answer_noise: Fraction  # fraction of the 10 human answers that disagree with the truth
    refs_per_image: Count  # 0: no RefCOCO+ expression
    oracle_pairs: Count  # web pairs that get oracle reference boxes
    oracle_noise: OracleBoxNoise
    jpeg_quality: Annotated[int, Range(ge=0, le=100)]  # Pillow's scale
    images: SynthSplitSizes
    karpathy: KarpathySizes
    defects: DefectRates


@dataclass(frozen=True)
class XVLMSource:
    """An extra annotation file in X-VLM's released JSON-lines layout, filtered like the others."""

    name: str  # the source's name in the report and the output file name
    path: str  # relative to the data root, or absolute
    kind: Literal["object", "region"]  # objects get the text template; regions keep their phrase


@dataclass(frozen=True)
class NearDuplicateParams:
    """COPA/X-VLM drop 'highly overlapped textual descriptions of regions (>75%)' without saying
    how overlap is measured: here, over the lower-cased word sets of two phrases of one image."""

    measure: Literal["jaccard", "containment"]  # |A∩B|/|A∪B|, or |A∩B|/min(|A|,|B|)
    threshold: Fraction  # a region overlapping an earlier kept region of its image by more is dropped


@dataclass(frozen=True)
class FilterParams:
    sources: tuple[Literal["coco_objects", "vg_objects", "vg_regions"], ...]
    coco_splits: tuple[str, ...]  # COCO instances files whose objects are used (paper: train)
    xvlm_files: tuple[XVLMSource, ...]
    object_text_template: str  # COPA §3.3: "This is a {label}."
    prepend_attribute: bool  # X-VLM prepends an attribute to the class label; here the first one
    box_tolerance: NonNegative  # px a box may stick out of the image and be clipped instead of dropped
    min_area_fraction: Fraction  # boxes under this fraction of the image area are dropped (paper: 1%)
    near_duplicate: NearDuplicateParams
    image_check: Literal["none", "exists", "header"]  # header: the file opens and has the annotated size


@dataclass(frozen=True)
class PatchLabelParams:
    image_size: PositiveInt  # pretraining resolution (square resize), px
    patch_size: PositiveInt  # ViT patch size, px
    min_overlap: Fraction  # fraction of a patch the box must cover; 0 = any overlap (COPA §3.3)
    figure_examples: Count  # images drawn in the patch-label figure


# model.selection.method (copa.models.selectors); an architecture takes some of them (copa.train.architectures)
SelectionMethod = Literal["none", "tpd", "cls_attention", "text_attention", "oracle", "random"]
SELECTION_METHODS: tuple[str, ...] = typing.get_args(SelectionMethod)


@dataclass(frozen=True)
class SelectionParams:
    method: SelectionMethod  # COPA: tpd; mPLUG: none; TRIPS: text_attention;
    # oracle (the patches of the boxes the text refers to; needs the synthetic world's referents) and random: references
    location: tuple[PositiveInt, ...]  # after layer k (tpd, cls_attention: one k); inside layers (text_attention)
    keep_ratio: KeepRatio
    lr: Literal["text", "vision"]  # the selector's own parameters train at pretrain / finetune lr_text or lr_vision
    tpd_fusion: Literal["softmax", "normalized"]  # the TPD's fused-token weights (COPA eq. 1: softmax of the scores)


@dataclass(frozen=True)
class ModelParams:
    """Sizes of the COPA model; the pretraining resolution and patch size are ``patch_labels``'s
    (the labels must be on the model's patch grid)."""

    vision_dim: PositiveInt
    vision_depth: PositiveInt
    vision_heads: PositiveInt
    vision_pre_norm: bool  # a LayerNorm before the first block (CLIP's ViTs)
    vision_activation: Literal["gelu", "quick_gelu"]  # OpenAI CLIP's ViTs: quick_gelu
    vision_pos_init: Literal["trunc_normal", "sincos"]  # position embeddings' init (a checkpoint replaces it)
    text_dim: PositiveInt
    text_heads: PositiveInt
    text_intermediate: PositiveInt
    text_layers: PositiveInt  # BERT-base layers 1-6 in the paper
    fusion_layers: PositiveInt  # BERT-base layers 7-12
    fusion_stride: PositiveInt  # mPLUG: a connected-attention layer every 3 (6: co-attention only)
    decoder_layers: PositiveInt
    embed_dim: PositiveInt  # ITC projection width
    max_text_length: PositiveInt
    vocab_size: PositiveInt  # of the WordPiece vocabulary trained on the captions (unused with vocab_file)
    vocab_file: str | None  # a vocab.txt to use instead (bert-base-uncased's with BERT weights)
    selection: SelectionParams


@dataclass(frozen=True)
class EncoderInitParams:
    """Where the vision and text encoders start (COPA §4.1: CLIP ViT-B/16 and BERT-base).

    ``none``: from the model's random initialisation (or weights loaded by the caller);
    ``contrastive``: ``steps`` steps of in-batch image-text contrastive learning first (the
    stand-in for the CLIP / BERT initialisation when no checkpoint exists: from random weights
    every image gets nearly the same feature and Algorithm 1's ITC does not take off);
    ``checkpoints``: the ViT from ``vision_checkpoint`` (a timm state dict) and the text encoder
    + fusion from ``text_checkpoint`` (a BERT state dict: layers 1-6 -> text, 7-12 -> fusion).
    """

    method: Literal["none", "contrastive", "checkpoints"]
    steps: Count  # 0: none (the paper profile's checkpoints)
    lr: LearningRate
    vision_checkpoint: str | None  # .safetensors or torch file; relative paths from the working directory
    text_checkpoint: str | None
    decoder_from_text_checkpoint: bool  # mPLUG: the decoder starts from the same BERT (self-attention, FFN, embeddings)


@dataclass(frozen=True)
class WarmUpParams:
    """COPA §3.3: [CLS]-attention selection until 'the PTA loss converges'; the rule is not given."""

    rule: Literal["steps", "pta_loss"]
    steps: Count  # 0: the detector selects from the first step
    pta_loss: NonNegative  # the running PTA loss under which the detector takes over


@dataclass(frozen=True)
class LossWeights:
    itc: NonNegative
    itm: NonNegative
    mlm: NonNegative
    prefix: NonNegative
    pta: NonNegative


# pretrain.itm_guidance (copa.models.pretraining): the text that guides the selection of an ITM pair's image
ItmGuidance = Literal["pair_text", "own_caption"]
ITM_GUIDANCES: tuple[str, ...] = typing.get_args(ItmGuidance)


@dataclass(frozen=True)
class PretrainParams:
    epochs: PositiveInt
    steps_per_epoch: PositiveInt | None  # None: one pass over the pairs; N: N steps on a fresh seeded draw each epoch
    batch_size: PositiveInt  # image-text pairs per step (all processes)
    object_batch_size: PositiveInt  # object/region samples per step, for PTA
    pta_labels: Literal["same_text", "chosen_box"]  # the boxes a PTA text labels (copa.data.pretrain_data.labelled_elems)
    pair_sources: tuple[Literal["coco", "vg", "cc3m"], ...]
    lr_vision: LearningRate  # COPA: 1e-5 (ViT)
    lr_text: LearningRate  # COPA: 1e-4 (BERT-initialised parts)
    min_lr: NonNegative
    warmup_steps: Count
    weight_decay: NonNegative
    queue_size: Count  # ITC feature queue (ALBEF); 0: in-batch negatives only
    momentum: Fraction
    distill_alpha: Fraction
    mlm_probability: Fraction
    loss_weights: LossWeights  # COPA eq. 4: equal weights
    itc_image: Literal["paired_text", "text_free"]
    itm_guidance: ItmGuidance
    warm_up: WarmUpParams
    encoder_init: EncoderInitParams
    checkpoint_every: PositiveInt  # steps


@dataclass(frozen=True)
class FinetuneSchedule:
    """What every fine-tuning sets (COPA Table 11: AdamW, weight decay 0.05, warm-up + cosine)."""

    epochs: PositiveInt
    steps_per_epoch: PositiveInt | None  # None: one pass over the task's training examples
    batch_size: PositiveInt
    lr_vision: LearningRate  # the ViT and its patch selector
    lr_text: LearningRate  # everything else (text encoder, fusion, decoder, heads)
    min_lr: NonNegative
    warmup_steps: Count
    weight_decay: NonNegative
    checkpoint_every: PositiveInt


@dataclass(frozen=True)
class RetrievalFinetuneParams(FinetuneSchedule):
    """Image-text retrieval (Table 11: lr 1e-5 ViT / 2e-6 BERT, batch 256, 5 epochs); inference
    settings in :class:`RetrievalEvalParams`."""

    dataset: Literal["coco", "flickr30k"]  # Karpathy train + restval


@dataclass(frozen=True)
class VQAFinetuneParams(FinetuneSchedule):
    """VQA answer generation (Table 11: lr 2e-5 / 5e-6, batch 1024, 8 epochs)."""

    train_splits: tuple[Literal["train2014", "val2014"], ...]  # COPA: train2014 + val2014 (+ VG QA, not here)
    image_size: PositiveInt | None  # fine-tuning and answering resolution (COPA Table 5); None: the pretraining's
    # the selector fine-tuned and answered with (issue 19's references: oracle, random), at the
    # pretraining run's location and keep ratio; None: the pretraining run's own (and for runs
    # resolved before this option)
    selection: SelectionMethod | None = None


@dataclass(frozen=True)
class CaptioningFinetuneParams(FinetuneSchedule):
    """Captioning, first stage: cross-entropy (Table 11: lr 1e-5, batch 256, 5 epochs)."""

    dataset: Literal["coco", "flickr30k"]  # Karpathy train + restval
    label_smoothing: Annotated[float, Range(ge=0, lt=1)]


@dataclass(frozen=True)
class CiderFinetuneParams(FinetuneSchedule):
    """Captioning, second stage: CIDEr-D optimisation by self-critical sequence training
    (Rennie et al. 2017), from the cross-entropy run (Table 11: lr 8e-7, 5 more epochs)."""

    samples: PositiveInt  # captions sampled per image
    baseline: Literal["greedy", "mean"]  # SCST's greedy caption, or the mean reward of the other samples
    max_length: PositiveInt  # tokens per sampled caption


@dataclass(frozen=True)
class GroundingFinetuneParams(FinetuneSchedule):
    """RefCOCO+ grounding, the box as coordinate tokens of the decoder (Table 11: lr 2e-5 / 2e-6,
    batch 512, 120 epochs)."""

    head: Literal["tokens", "regression"]  # COPA / mPLUG: coordinate tokens; X-VLM: a box-regression head
    coordinate_bins: Annotated[int, Range(ge=2)]  # tokens: each of x1 y1 x2 y2 (relative to the image side) is one of this many tokens


@dataclass(frozen=True)
class FinetuneParams:
    retrieval: RetrievalFinetuneParams
    vqa: VQAFinetuneParams
    captioning: CaptioningFinetuneParams
    captioning_cider: CiderFinetuneParams
    grounding: GroundingFinetuneParams


@dataclass(frozen=True)
class RetrievalEvalParams:
    k_test: PositiveInt  # candidates re-ranked by ITM per query (COPA Appendix E: 256 COCO, 128 Flickr30K)


@dataclass(frozen=True)
class DecodingParams:
    beam_size: PositiveInt
    max_length: PositiveInt  # generated tokens, end token included
    min_length: Count  # 0: the end token may come first
    length_penalty: NonNegative  # beam scores: sum of log-probabilities / length ** length_penalty


@dataclass(frozen=True)
class VQAEvalParams(DecodingParams):
    split: Literal["train2014", "val2014", "test2015"]  # needs annotations: val2014 on real data (test-dev is scored by a server)
    inference: Literal["generate", "rank"]  # beam search, or ranking a candidate answer list (ALBEF)
    answer_list_size: PositiveInt  # rank: the most frequent training answers
    rank_k: PositiveInt  # rank: candidates kept by first-token probability, then scored whole (ALBEF: 128)
    swapped_image_control: bool  # also answer each question about the image of another question of its type (a second pass)


@dataclass(frozen=True)
class CaptioningEvalParams(DecodingParams):
    split: Literal["val", "test"]  # Karpathy split
    spice: bool  # run SPICE when its CoreNLP jars are present


@dataclass(frozen=True)
class GroundingEvalParams:
    splits: tuple[Literal["train", "val", "testA", "testB"], ...]  # RefCOCO+ (UNC) splits


@dataclass(frozen=True)
class EvaluateParams:
    """Inference settings, apart from fine-tuning's so that changing them re-evaluates a run
    without fine-tuning it again."""

    retrieval: RetrievalEvalParams
    vqa: VQAEvalParams
    captioning: CaptioningEvalParams  # also the CIDEr-optimised run's
    grounding: GroundingEvalParams


@dataclass(frozen=True)
class ThroughputParams:
    max_batch: PositiveInt  # the batch doubles from 1 up to this cap, or to the last one that fits on a GPU
    warmup: Count  # untimed forwards first
    iterations: PositiveInt  # timed forwards


@dataclass(frozen=True)
class LatencyParams:
    warmup: Count
    iterations: PositiveInt  # timed batch-1 forwards; the median is reported


@dataclass(frozen=True)
class TrainingMemoryParams:
    """One pretraining step (forward + backward) on a synthetic batch (COPA Figure 3: batch 512,
    256 px, 25 text tokens)."""

    batch_size: PositiveInt  # image-text pairs
    object_batch_size: PositiveInt  # object samples (PTA); the paper does not give Figure 3's
    image_size: PositiveInt
    text_length: PositiveInt


@dataclass(frozen=True)
class EfficiencyParams:
    """Cost of a model in the paper's protocols: FLOPs, throughput and latency of one image-text
    pair's VQA-style forward (COPA Table 4: 224 px, 40 text tokens) and the memory of a
    pretraining step (Figure 3). Conventions in ``copa.eval.efficiency``."""

    image_size: PositiveInt
    text_length: PositiveInt
    throughput: ThroughputParams
    latency: LatencyParams
    memory: TrainingMemoryParams


@dataclass(frozen=True)
class ReferenceBoxesParams:
    """COPA Appendix C.1 (Figure 5): boxes of the regions each web caption names, on a sample of
    CC3M-style pairs, to test the TPD out of domain. The paper names neither the Grounding DINO
    checkpoint nor its thresholds: the defaults are the largest public model and the thresholds
    of Grounding DINO's own demo."""

    detector: Literal["grounding_dino", "oracle"]  # oracle: the synthetic world's true boxes with detector-like noise
    model: str  # a local directory, a hub name (when reachable), or "random-tiny" (untrained: checks the plumbing only)
    pairs: PositiveInt  # web pairs sampled from the CC3M training TSV (paper: 10K)
    seed: Seed  # of the sample (and of random-tiny's weights)
    box_threshold: Fraction  # a query becomes a box when its best token score exceeds this
    text_threshold: Fraction  # the tokens above this name the box's phrase
    batch_size: PositiveInt


@dataclass(frozen=True)
class SingleStreamParams:
    """COPA §4.7 / Table 6 (``architecture: single_stream``): one ViLT-style transformer over the
    concatenated text tokens and image patches, its layers and sizes the ViT's (``model.vision_*``,
    loaded from the ViT as ViLT loads ViT-B), the selection ``model.selection``'s: COPA-S with the
    TPD after layer k, ViLT with ``none``. Choices the paper leaves open, documented in
    ``copa.models.single_stream``."""

    tpd_query: Literal["overall_cls", "overall_and_text_cls"]  # what the TPD reads beside each patch
    itm_swap_probability: Fraction  # ViLT's ITM: a pair's image is replaced by another one with this probability
    vqa_answers: PositiveInt  # the classifier's answer vocabulary: the most frequent training answers (ViLT: 3,129)


@dataclass(frozen=True)
class ReportParams:
    """The tables, figures and claims check; which runs each needs: params/grids/."""

    seeds: tuple[Seed, ...]  # every trained row of a grid is run once per seed


@dataclass(frozen=True)
class Params:
    profile: str
    seed: Seed
    architecture: str  # a name of copa.train.architectures (COPA / mPLUG, COPA-S / ViLT...): checked there, by who starts work
    data: DataParams
    synth: SynthParams
    filter: FilterParams
    patch_labels: PatchLabelParams
    model: ModelParams
    pretrain: PretrainParams
    finetune: FinetuneParams
    evaluate: EvaluateParams
    efficiency: EfficiencyParams
    reference_boxes: ReferenceBoxesParams
    single_stream: SingleStreamParams
    report: ReportParams
    # Where each leaf value came from ("params/base.yaml", "--set", ...), for messages.
    provenance: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of the parameter values (no provenance), e.g. to save in a checkpoint."""
        out = dataclasses.asdict(self)
        out.pop("provenance")
        return out


def vqa_image_size(params: Params) -> int:
    """The resolution VQA fine-tunes and answers at: ``finetune.vqa.image_size`` (COPA Table 5), or
    the pretraining's (``patch_labels.image_size``)."""
    return params.finetune.vqa.image_size or params.patch_labels.image_size  # on the patch grid: _check_relations


# --------------------------------------------------------------------------- loading
def available_profiles(params_dir: Path = DEFAULT_PARAMS_DIR) -> list[str]:
    return sorted(p.stem for p in (Path(params_dir) / PROFILES_DIR).glob("*.yaml"))


def load_params(
    profile: str | None = None,
    overrides: Sequence[str] = (),
    params_dir: str | Path = DEFAULT_PARAMS_DIR,
) -> Params:
    """Resolve base < profile < overrides into a validated :class:`Params`.

    ``profile=None`` takes the ``profile`` named in base.yaml.
    ``overrides`` are ``"dotted.key=value"`` strings; values are parsed as YAML.
    """
    merged, provenance = _profile_values(profile, Path(params_dir))
    for override in overrides:
        _merge(merged, parse_override(override), OVERRIDE_SOURCE, provenance)
    return _validated(merged, provenance)


def _profile_values(profile: str | None, params_dir: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """base.yaml merged with the profile's file, and where each leaf came from."""
    merged: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    base_path = params_dir / BASE_FILE
    _merge(merged, _read_yaml(base_path), str(base_path), provenance)
    profile = profile or merged.get("profile")
    if not isinstance(profile, str) or not profile:
        raise ParamsError(f"{base_path}: key 'profile' must name a profile in {params_dir / PROFILES_DIR}")
    profile_path = params_dir / PROFILES_DIR / f"{profile}.yaml"
    if not profile_path.is_file():
        raise ParamsError(
            f"unknown profile {profile!r}: no file {profile_path} "
            f"(available: {', '.join(available_profiles(params_dir)) or 'none'})"
        )
    _merge(merged, _read_yaml(profile_path), str(profile_path), provenance)
    merged["profile"] = profile
    provenance["profile"] = str(profile_path)
    return merged, provenance


def _validated(merged: dict[str, Any], provenance: dict[str, str]) -> Params:
    params = Params(**_build(Params, merged, "", provenance, exclude=("provenance",)), provenance=provenance)
    _check_relations(params)
    return params


# Where model.selection.location may point (copa.models.vit.VisionEncoder guards its direct callers the
# same way): TRIPS' text attention selects inside layer k (1..depth), every other method after it
# (1..depth - 1; none too: the ViT checks the location whatever the selector). These take one layer:
SELECTS_INSIDE_A_LAYER = ("text_attention",)
ONE_LOCATION = ("tpd", "oracle", "random")  # an architecture may take fewer: copa.train.architectures


def _check_relations(params: Params) -> None:
    """The checks that need two values, after the ranges of each: refused in the same one-line form."""
    def refuse(key: str, value: Any, must: str) -> typing.NoReturn:
        raise ParamsError(f"{_source_of(key, params.provenance)}: key '{key}' = {value}: must be {must}")

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
    seeds = list(params.report.seeds)
    if not seeds or len(set(seeds)) < len(seeds):
        refuse("report.seeds", seeds, "one or more seeds, each once")


def params_from_dict(data: Mapping[str, Any], source: str, params_dir: str | Path = DEFAULT_PARAMS_DIR) -> Params:
    """Validated :class:`Params` from a plain dict such as :meth:`Params.to_dict` wrote (the copy in
    a checkpoint); errors name ``source``. Keys the dict lacks, options added to params/ after it was
    written, come from its profile's current files (their provenance says so); a key params/ no
    longer has is an error."""
    profile = data.get("profile")
    if not isinstance(profile, str):
        raise ParamsError(f"{source}: no 'profile' key naming the parameters' profile")
    merged, provenance = _profile_values(profile, Path(params_dir))
    _merge(merged, data, source, provenance)
    return _validated(merged, provenance)


def validated_record(cls: type, data: Any, source: str) -> Any:
    """``data`` read from ``source`` (e.g. a grid file in params/grids/) as the dataclass ``cls``,
    checked as parameters are: an unknown, missing or mistyped key is a :class:`ParamsError` naming
    ``source`` and the key."""
    provenance: dict[str, str] = {}
    _record_all_sources(data, "", source, provenance)
    return cls(**_build(cls, data, "", provenance))


def _record_all_sources(value: Any, dotted: str, source: str, provenance: dict[str, str]) -> None:
    """Like :func:`_record_sources`, through lists too (``rows[2].label``)."""
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _record_all_sources(sub, f"{dotted}.{key}" if dotted else str(key), source, provenance)
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _record_all_sources(sub, f"{dotted}[{i}]", source, provenance)
    provenance[dotted or "top level"] = source


def parse_override(text: str) -> dict[str, Any]:
    """``"synth.seed=3"`` -> ``{"synth": {"seed": 3}}`` (value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"{OVERRIDE_SOURCE} {text!r}: expected KEY=VALUE, e.g. synth.seed=3")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{OVERRIDE_SOURCE} {text!r}: value is not valid YAML ({exc})") from None
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: parameter file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(into: dict[str, Any], new: Mapping[str, Any], source: str, provenance: dict[str, str], prefix: str = "") -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value, source, provenance, dotted + ".")
            continue
        into[key] = dict(value) if isinstance(value, Mapping) else value
        _record_sources(value, dotted, source, provenance)


def _record_sources(value: Any, dotted: str, source: str, provenance: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _record_sources(sub, f"{dotted}.{key}", source, provenance)
    else:
        provenance[dotted] = source


def _source_of(dotted: str, provenance: Mapping[str, str]) -> str:
    """The file that set ``dotted`` or, for a missing key, the file of its nearest sibling."""
    if dotted in provenance:
        return provenance[dotted]
    listed = dotted.split("[", 1)[0]  # an item of a list value: the list's file
    if listed in provenance:
        return provenance[listed]
    prefix = dotted.rsplit(".", 1)[0] + "." if "." in dotted else ""
    sources = sorted({src for key, src in provenance.items() if key.startswith(prefix)})
    return " / ".join(sources) or "params"


def _build(cls: type, data: Any, prefix: str, provenance: Mapping[str, str], exclude: Sequence[str] = ()) -> dict[str, Any]:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, Mapping):
        raise ParamsError(f"{_source_of(where, provenance)}: key '{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)  # with the Annotated ranges
    known = [f.name for f in dataclasses.fields(cls) if f.name not in exclude]
    for key in data:
        if key not in known:
            dotted = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys here: {', '.join(known)}"
            raise ParamsError(f"{_source_of(dotted, provenance)}: unknown key '{dotted}'{hint}")
    optional = {f.name for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    values = {}
    for name in known:
        dotted = f"{prefix}{name}"
        if name not in data:
            if name in optional:  # the dataclass's default
                continue
            raise ParamsError(f"{_source_of(dotted, provenance)}: missing key '{dotted}'")
        values[name] = _coerce(hints[name], data[name], dotted, provenance)
    return values


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(kind: type, bounds: Range, value: Any, dotted: str, provenance: Mapping[str, str],
            fail: typing.Callable[[str], ParamsError]) -> int | float:
    """``value`` as an int or float parameter within ``bounds``."""
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        number: int | float = value
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str) and _parses_as_float(value):  # YAML 1.1 reads 1e-5 as a string
                raise fail(f"a number (YAML needs a dot: write {float(value):.1e})")
            raise fail("a number")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
    if not bounds.admits(number):
        raise ParamsError(f"{_source_of(dotted, provenance)}: key '{dotted}' = {_shown(value)}: must be {bounds.words(kind)}")
    return number


def _shown(value: Any) -> str:
    """``value`` for a message: an integer of hundreds of digits by its length."""
    text = str(value)
    return f"{text[:4]}...{text[-4:]} ({len(text)} digits)" if isinstance(value, int) and len(text) > 24 else text


def _coerce(hint: Any, value: Any, dotted: str, provenance: Mapping[str, str]) -> Any:
    def fail(expected: str) -> ParamsError:
        return ParamsError(
            f"{_source_of(dotted, provenance)}: key '{dotted}' must be {expected}, got {value!r} ({type(value).__name__})"
        )

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        (bounds,) = [a for a in args[1:] if isinstance(a, Range)]
        return _number(args[0], bounds, value, dotted, provenance, fail)
    if hint in (int, float):
        return _number(hint, Range(), value, dotted, provenance, fail)
    if dataclasses.is_dataclass(hint):
        return hint(**_build(hint, value, dotted + ".", provenance))
    if origin is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, dotted, provenance)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise fail(f"a list of {len(args)} values" if Ellipsis not in args else "a list")
        if Ellipsis in args:
            return tuple(_coerce(args[0], v, f"{dotted}[{i}]", provenance) for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail(f"a list of {len(args)} values")
        return tuple(_coerce(a, v, f"{dotted}[{i}]", provenance) for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        return [_coerce(args[0], v, f"{dotted}[{i}]", provenance) for i, v in enumerate(value)]
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise fail("a mapping")
        return {k: _coerce(args[1], v, f"{dotted}.{k}", provenance) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise TypeError(f"config.py: unsupported parameter type {hint!r} for '{dotted}'")  # programming error
