"""The parameter tree: :class:`Params` and its sections of the model, training and inference (those
of data preparation: ``copa.config.data_params``). The dataclasses are the single definition of
the parameters; each numeric field's :class:`~copa.config.ranges.Range` is declared beside it."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping

from copa.config.data_params import DataParams, FilterParams, PatchLabelParams, ReferenceBoxesParams, SynthParams
from copa.config.ranges import Count, Dropout, Fraction, GradientNorm, InitStd, KeepRatio, LearningRate, NonNegative, PositiveInt, Range, Seed

# Sections a training stage does not read: editing them does not block resuming it
# (EngineConfig.resume_ignores). Fine-tuning reads neither the inference settings, nor the
# cost protocol, nor Figure 5's reference boxes, nor which grid cells the report trains and with
# which seeds (a run of the demo resumes under the full grid); pretraining, in addition, none of
# the fine-tuning settings nor the from-scratch VQA anchor's.
AFTER_TRAINING_SECTIONS = ("evaluate", "efficiency", "reference_boxes", "report")
DOWNSTREAM_SECTIONS = ("finetune", "vqa_scratch", *AFTER_TRAINING_SECTIONS)


# model.selection.method (copa.models.selectors); an architecture takes some of them (copa.train.architectures)
SelectionMethod = Literal["none", "tpd", "cls_attention", "text_attention", "oracle", "random"]
SELECTION_METHODS: tuple[str, ...] = typing.get_args(SelectionMethod)
Perception = Literal["encoder", "oracle"]


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
    vision_stem: Literal["patch", "conv", "patch_and_conv"]  # pixels -> tokens: linear map | conv stem | both summed
    text_dim: PositiveInt
    text_heads: PositiveInt
    text_intermediate: PositiveInt
    text_layers: PositiveInt  # BERT-base layers 1-6 in the paper
    fusion_layers: PositiveInt  # BERT-base layers 7-12
    fusion_stride: PositiveInt  # mPLUG: a connected-attention layer every 3 (6: co-attention only)
    decoder_layers: PositiveInt
    # the normal initialisation of the layers built from BERT's parts (text encoder, fusion, decoder, MLM head; a
    # single-stream model's text embeddings and heads): BERT's initializer_range is 0.02 at every width
    init_std: InitStd
    dropout: Dropout  # the same parts' hidden and attention dropout (BertConfig's two probabilities); the ViT's stays at timm's 0
    embed_dim: PositiveInt  # ITC projection width
    max_text_length: PositiveInt
    vocab_size: PositiveInt  # of the WordPiece vocabulary trained on the captions (unused with vocab_file)
    vocab_file: str | None  # a vocab.txt to use instead (bert-base-uncased's with BERT weights)
    selection: SelectionParams
    # encoder: the ViT; oracle: the synthetic scene's perfect image tokens (copa.models.scene_tokens), set by
    # finetune.<task>.perception for a VQA or grounding run
    perception: Perception


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
    objective: Literal["captions", "captions_and_boxes"]  # contrastive: + boxes against their texts (copa.train.encoder_init)
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
    grad_clip: GradientNorm | None  # the gradients' global norm clipped to this before each step; None: not clipped (the paper's)
    queue_size: Count  # ITC feature queue (ALBEF); 0: in-batch negatives only
    momentum: Fraction
    distill_alpha: Fraction
    mlm_probability: Fraction
    loss_weights: LossWeights  # COPA eq. 4: equal weights
    itc_image: Literal["paired_text", "text_free"]
    itm_guidance: ItmGuidance
    itm_negative_sharpness: NonNegative  # ITM negatives drawn by softmax(this x ITC similarity): 1 ALBEF's hard ones, 0 uniform
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
    # the gradients' global norm is clipped to this before each step; None: not clipped (the paper
    # gives no clipping)
    grad_clip: GradientNorm | None
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
    # issue 23's perception bracket: oracle fine-tunes and answers with the scene's perfect image tokens
    # in place of the ViT (synthetic world only); None: the pretraining run's (the ViT)
    perception: Perception | None
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
    # the perception bracket as VQA's: oracle fine-tunes and evaluates with the scene's perfect image
    # tokens (synthetic world only); None: the pretraining run's ViT (and for runs resolved before this option)
    perception: Perception | None = None
    # with perception oracle, the objects its tokens show: all (the scene) | named (the expression's object alone: the
    # box's read-out without the lookup among the others)
    oracle_objects: Literal["all", "named"] = "all"
    # the share of patches the selection keeps in the fine-tune and its evaluation; None: the pretraining run's (COPA
    # §4.2: 50% for every downstream task)
    keep_ratio: KeepRatio | None = None
    # COPA's PTA loss (eq. 3) on the referred box's patches, added to the box's loss with this weight (a TPD run's);
    # 0: the paper's fine-tune (the box's loss alone, §4.2.4)
    pta_weight: NonNegative = 0.0


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
    state_probe: Count  # training questions per question type for ridge probes of the model's states (copa.tasks.vqa_probe); 0: none


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


# The paired timing protocol's floor (copa.eval.paired_timing): fewer rounds give its bootstrap
# interval of a speedup too few distinct resamples to trust.
MIN_TIMING_ROUNDS = 15


@dataclass(frozen=True)
class ThroughputParams:
    max_batch: PositiveInt  # the batch doubles from 1 up to this cap, or to the last one that fits on a GPU
    warmup: Count  # untimed forwards of each model first
    iterations: PositiveInt  # timed forwards of each model per round


@dataclass(frozen=True)
class LatencyParams:
    warmup: Count
    iterations: PositiveInt  # timed batch-1 forwards of each model per round


@dataclass(frozen=True)
class TimingParams:
    """The paired timing protocol (copa.eval.paired_timing): the models of a table timed in one
    process, interleaved round by round; the speedups' bootstrap over the rounds."""

    rounds: Annotated[int, Range(ge=MIN_TIMING_ROUNDS)]
    seed: Seed  # of the bootstrap's draws of rounds


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
    timing: TimingParams
    memory: TrainingMemoryParams


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
class VQAScratchParams:
    """The supervised-from-scratch VQA anchor (issue 23, ``copa vqa-scratch``): a CNN + GRU + FiLM
    classifier (Perez et al. 2018; copa.models.film) trained on the training questions of
    ``finetune.vqa.train_splits`` alone, evaluated as the fine-tuned VQA rows are (``evaluate.vqa``)."""

    channels: PositiveInt  # of the stem and the FiLM blocks
    grid: PositiveInt  # the feature map's side: image_size / grid in 1, 2, 4, 8, 16 (four stem convolutions of stride 1 or 2)
    word_dim: PositiveInt
    gru_dim: PositiveInt
    blocks: PositiveInt  # FiLM residual blocks
    answers: PositiveInt  # the classifier's answers: the most frequent training answers
    epochs: PositiveInt
    steps_per_epoch: PositiveInt | None  # None: one pass over the training images; N: N steps on a fresh seeded draw each epoch
    batch_size: PositiveInt  # images per step, each with every training question about it
    lr: LearningRate  # AdamW, linear warm-up then cosine decay to 0
    weight_decay: NonNegative  # 0: Adam
    warmup_steps: Count
    checkpoint_every: PositiveInt
    image_size: PositiveInt | None  # None: the pretraining resolution (patch_labels.image_size)


@dataclass(frozen=True)
class ReportParams:
    """The tables, figures and claims check; which runs each needs: params/grids/."""

    seeds: tuple[Seed, ...]  # every trained row of a grid is run once per seed
    cells: Literal["trained", "all"]  # trained: the rows each grid's `trained` names for the profile | all: every row (the full grid)


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
    vqa_scratch: VQAScratchParams
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
    return params.finetune.vqa.image_size or params.patch_labels.image_size  # on the patch grid: copa.config.relations


# What the from-scratch VQA anchor (copa.tasks.vqa_scratch) reads of the params beside the seed: the rerun
# triggers of its workflow job and the overrides the job passes on
VQA_SCRATCH_READS = ("vqa_scratch", "finetune.vqa.train_splits", "evaluate.vqa", "patch_labels.image_size", "model.max_text_length")


def vqa_scratch_image_size(params: Params) -> int:
    """The resolution the from-scratch VQA anchor trains and answers at: ``vqa_scratch.image_size``,
    or the pretraining's (``patch_labels.image_size``)."""
    return params.vqa_scratch.image_size or params.patch_labels.image_size
