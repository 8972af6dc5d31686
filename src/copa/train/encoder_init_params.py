"""What the contrastive encoder-init stage (copa.train.encoder_init) reads, as plain values.

Its own module, free of torch, because the workflow asks it at parse time (the stage's rerun
trigger), and a parse should not wait for torch and transformers to load.
"""

from __future__ import annotations

import dataclasses

from copa.config import Params


def encoder_init_params(params: Params) -> dict:
    """The parameters the stage's checkpoints record (a resume compares them) and the workflow's
    rerun trigger. Not the selection (the stage selects nothing) nor Algorithm 1's settings, so
    that every run of a profile and seed shares it; with the box objective, how PTA's object stream
    is filtered, drawn and labelled too."""
    p = params.pretrain
    read = {"profile": params.profile, "seed": params.seed,
            "model": {k: v for k, v in dataclasses.asdict(params.model).items() if k != "selection"},
            "patch_labels": {"image_size": params.patch_labels.image_size, "patch_size": params.patch_labels.patch_size},
            "pretrain": {"encoder_init": dataclasses.asdict(p.encoder_init), "batch_size": p.batch_size,
                         "pair_sources": list(p.pair_sources), "weight_decay": p.weight_decay}}
    if reads_boxes(params):  # how PTA's object stream is filtered, drawn and labelled
        read["filter"] = dataclasses.asdict(params.filter)
        read["patch_labels"]["min_overlap"] = params.patch_labels.min_overlap
        read["pretrain"].update(object_batch_size=p.object_batch_size, pta_labels=p.pta_labels)
    return read


def reads_boxes(params: Params) -> bool:
    """Whether the contrastive stage trains on PTA's object stream too (``objective: captions_and_boxes``):
    it then reads the filtered annotations."""
    init = params.pretrain.encoder_init
    return init.method == "contrastive" and init.objective == "captions_and_boxes"
