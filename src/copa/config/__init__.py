"""Typed experiment parameters, loaded once at the boundary from params/.

Resolution order (later wins): ``params/base.yaml`` < ``params/profiles/<profile>.yaml`` <
``--set key.path=value`` overrides. Every value is checked against the dataclasses of the
parameter tree: an unknown key, a wrong type or a number out of its :class:`Range` (declared
beside its field; the checks that need two values in ``copa.config.relations``) raises
:class:`ParamsError` naming the file and the key, so a typo never silently falls back to a
default. The dataclasses are the single definition of the parameters; ``workflow/schemas/`` only
validates the Snakemake run-control config.

``copa.config`` is the one import path; its modules, one job each:

- ``ranges``: :class:`Range` and the annotated types most parameters share;
- ``data_params`` and ``params``: the parameter tree (data preparation's sections; the model,
  training and inference sections and the root :class:`Params`);
- ``loading``: reading and merging the files and overrides with their provenance, and building
  the tree with each value's type and range checked;
- ``relations``: the checks across values;
- ``errors``: :class:`ParamsError` and the file its message names.
"""

from copa.config.data_params import (
    DataParams,
    DefectRates,
    FilterParams,
    KarpathySizes,
    NearDuplicateParams,
    OracleBoxNoise,
    PatchLabelParams,
    ReferenceBoxesParams,
    SynthParams,
    SynthSplitSizes,
    XVLMSource,
)
from copa.config.errors import ParamsError, UserError
from copa.config.loading import (
    DEFAULT_PARAMS_DIR,
    available_profiles,
    load_params,
    overrides_of,
    params_from_dict,
    parse_override,
    safe_load_unique,
    validated_record,
)
from copa.config.params import (
    AFTER_TRAINING_SECTIONS,
    DOWNSTREAM_SECTIONS,
    ITM_GUIDANCES,
    SELECTION_METHODS,
    CaptioningEvalParams,
    CaptioningFinetuneParams,
    CiderFinetuneParams,
    DecodingParams,
    EfficiencyParams,
    MIN_TIMING_ROUNDS,
    EncoderInitParams,
    EvaluateParams,
    FinetuneParams,
    FinetuneSchedule,
    GroundingEvalParams,
    GroundingFinetuneParams,
    ItmGuidance,
    LatencyParams,
    LossWeights,
    ModelParams,
    Params,
    PretrainParams,
    ReportParams,
    RetrievalEvalParams,
    RetrievalFinetuneParams,
    SelectionMethod,
    SelectionParams,
    SingleStreamParams,
    ThroughputParams,
    TimingParams,
    TrainingMemoryParams,
    VQAEvalParams,
    VQAFinetuneParams,
    VQAScratchParams,
    WarmUpParams,
    vqa_image_size,
    VQA_SCRATCH_READS,
    vqa_scratch_image_size,
)
from copa.config.ranges import Count, Fraction, KeepRatio, LearningRate, NonNegative, PositiveInt, Range, Seed

__all__ = [
    # loading
    "DEFAULT_PARAMS_DIR", "ParamsError", "UserError", "available_profiles", "load_params", "overrides_of", "params_from_dict",
    "parse_override", "safe_load_unique", "validated_record",
    # ranges
    "Count", "Fraction", "KeepRatio", "LearningRate", "NonNegative", "PositiveInt", "Range", "Seed",
    # the tree: the root, its section groups, the choices other modules enumerate
    "Params", "DOWNSTREAM_SECTIONS", "AFTER_TRAINING_SECTIONS", "ITM_GUIDANCES", "SELECTION_METHODS", "ItmGuidance",
    "SelectionMethod", "vqa_image_size", "vqa_scratch_image_size", "VQA_SCRATCH_READS",
    # the tree: sections
    "CaptioningEvalParams", "CaptioningFinetuneParams", "CiderFinetuneParams", "DataParams", "DecodingParams",
    "DefectRates", "EfficiencyParams", "MIN_TIMING_ROUNDS", "EncoderInitParams", "EvaluateParams", "FilterParams", "FinetuneParams",
    "FinetuneSchedule", "GroundingEvalParams", "GroundingFinetuneParams", "KarpathySizes", "LatencyParams",
    "LossWeights", "ModelParams", "NearDuplicateParams", "OracleBoxNoise", "PatchLabelParams", "PretrainParams",
    "ReferenceBoxesParams", "ReportParams", "RetrievalEvalParams", "RetrievalFinetuneParams", "SelectionParams",
    "SingleStreamParams", "SynthParams", "SynthSplitSizes", "ThroughputParams", "TimingParams", "TrainingMemoryParams",
    "VQAEvalParams", "VQAFinetuneParams", "VQAScratchParams", "WarmUpParams", "XVLMSource",
]
