"""The parameter sections of data preparation: the data root, the synthetic world, the filtering
of the annotations, the patch labels and Figure 5's reference boxes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from copa.config.ranges import Count, Fraction, NonNegative, PositiveInt, Range, Seed


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
