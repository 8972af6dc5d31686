"""The architectures by name (params ``architecture``): the one table of how each model is built,
trained, costed and fine-tuned; every other place asks it.

``dual_stream`` is COPA / mPLUG (ViT, text encoder, fusion, decoder); ``single_stream`` is COPA
Table 6's COPA-S / ViLT (one transformer over [text; image], ``copa.models.single_stream``). An
entry names its code as ``"module:function"`` strings, imported on use: this module imports no
torch, so the Snakemake rules and the grids read it at parse time; a rule's job adds the modules
of its run's entry to its rerun triggers (``code_modules``), not the other entries'. Adding an
architecture is its modules plus one ``register``.
Which downstream tasks it fine-tunes, and how, is the task registry's (``copa.tasks.registry.HEADS``,
one line per head): the tasks layer sits above this one, so their code cannot be named here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from copa.config import SELECTION_METHODS, ParamsError


@dataclass(frozen=True)
class Architecture:
    name: str
    run_prefix: str  # its pretraining runs' names start with it ("" for one architecture only)
    params_section: str | None  # the params section of its own: its jobs pass it on and rerun on it
    spec: str  # "module:function" (params, vocab_size) -> the model's spec, at the pretraining resolution
    model: str  # "module:Class" spec -> nn.Module (the spec's image_size / max_text_length may be replaced)
    cost_forward: str  # "module:function" (model, images, input_ids, attention_mask, part) -> output: what costs count and time
    cost_forward_text: str  # what that forward runs, for the record's FLOPs convention
    describe: str  # "module:function" (model) -> what the efficiency record says of the model
    build_pretraining: str  # "module:function" (params, tokenizer) -> the pretraining step module: forward(batch) ->
                            # {"loss", terms...}, after_step(step), a bool buffer detector_on (efficiency sets it)
    initialise: str  # "module:function" (step module, params, pair_data, vocab_file, init_dir, box_data) -> metrics or None
    objectives: tuple[str, ...]  # its pretraining loss terms (copa.models.objectives.LOSS_NAMES)
    selection_methods: tuple[str, ...]  # the model.selection.method values it takes
    max_locations: int | None = None  # how many detection locations its selection takes (None: the selector decides)
    memory_by_itm_guidance: bool = False  # its training-memory record has the step under each pretrain.itm_guidance
    instruments: bool = False  # pretrain-eval, patch-detection and detected-patches read its runs


ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add ``arch`` to the table (plug-ins, tests); a name or run prefix already taken is refused."""
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    taken = {a.run_prefix: a.name for a in ARCHITECTURES.values()}
    if arch.run_prefix in taken:
        raise ValueError(f"architecture {arch.name!r}: run prefix {arch.run_prefix!r} is already {taken[arch.run_prefix]!r}'s")
    unknown = sorted(set(arch.selection_methods) - set(SELECTION_METHODS))
    if unknown:
        raise ValueError(f"architecture {arch.name!r}: unknown selection methods {unknown} (known: {', '.join(SELECTION_METHODS)})")
    ARCHITECTURES[arch.name] = arch
    return arch


register(Architecture(
    name="dual_stream", run_prefix="", params_section=None,
    spec="copa.train.build:copa_spec", model="copa.models.copa:CopaModel",
    cost_forward="copa.models.copa:understanding_forward",
    cost_forward_text="text encoder, ViT with the selector guided by the text [CLS] (detector on), fusion",
    describe="copa.models.copa:describe",
    build_pretraining="copa.train.build:build_pretraining", initialise="copa.train.encoder_init:initialise_copa",
    objectives=("itc", "itm", "mlm", "prefix", "pta"), selection_methods=SELECTION_METHODS,
    memory_by_itm_guidance=True, instruments=True,
))
register(Architecture(
    name="single_stream", run_prefix="single-", params_section="single_stream",
    spec="copa.train.build:single_stream_spec", model="copa.models.single_stream:SingleStreamModel",
    cost_forward="copa.models.single_stream:single_stream_forward",
    cost_forward_text="the single-stream transformer over [text; image] tokens, the selector guided by the overall [CLS] "
                      "(detector on), no head",
    describe="copa.models.single_stream:describe",
    build_pretraining="copa.train.build:build_single_stream_pretraining", initialise="copa.train.single_stream_pretrain:initialise_vit",
    objectives=("itm", "mlm", "pta"), selection_methods=("none", "tpd", "cls_attention"), max_locations=1,
))


def architecture(name_or_params: Any) -> Architecture:
    """The entry of a name, or of a ``Params`` (its ``architecture``; then also refused where its
    selection does not fit the entry), as a ParamsError naming the key, the value and the names."""
    params = None if isinstance(name_or_params, str) else name_or_params
    name = name_or_params if params is None else params.architecture
    if name not in ARCHITECTURES:
        where = f"{params.provenance.get('architecture', 'params')}: " if params is not None else ""
        raise ParamsError(f"{where}key 'architecture' = {name!r}: must be one of {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    if params is not None:
        check_selection(arch, params)
    return arch


def check_selection(arch: Architecture, params: Any) -> None:
    """``model.selection`` of ``params`` against what ``arch`` takes: its methods, its locations."""
    selection = params.model.selection
    for key, value, fits, must in (
        ("method", selection.method, selection.method in arch.selection_methods, f"one of {', '.join(arch.selection_methods)}"),
        ("location", list(selection.location), arch.max_locations is None or len(selection.location) <= arch.max_locations,
         f"at most {arch.max_locations} layer(s)"),
    ):
        if not fits:
            where = params.provenance.get(f"model.selection.{key}", "params")
            raise ParamsError(f"{where}: key 'model.selection.{key}' = {value}: must be {must} in a {arch.name} model")


def architecture_of_run(run_name: str) -> Architecture:
    """The architecture of a pretraining run's name: the entry of the longest prefix it starts with."""
    return max((a for a in ARCHITECTURES.values() if run_name.startswith(a.run_prefix)), key=lambda a: len(a.run_prefix))


def code_modules(arch: Architecture) -> tuple[str, ...]:
    """The modules ``arch``'s "module:function" strings name: what its runs run beyond the generic
    code (the rules' per-architecture rerun triggers)."""
    return tuple(sorted({value.split(":")[0] for value in vars(arch).values() if isinstance(value, str) and ":" in value}))


def resolve(target: str) -> Callable:
    """Import ``module:function`` on use: each entry pulls in only its own dependencies."""
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
