"""The single-stream architecture's start before Algorithm 1 (COPA §4.7, Table 6): its transformer
from ViT weights, as ViLT's is. ``copa pretrain`` with ``architecture: single_stream`` runs the
one pretraining run of ``copa.train.pretrain`` with the step of
``copa.models.single_stream_pretraining``; ``copa.train.architectures`` names both.
"""

from __future__ import annotations

from pathlib import Path

from copa.config import Params, ParamsError
from copa.models.single_stream_pretraining import SingleStreamPretraining
from copa.models.vit import load_timm_checkpoint
from copa.train.encoder_init import train_contrastive_encoders


def initialise_vit(step: SingleStreamPretraining, params: Params, pair_data, vocab_file: Path, init_dir: Path,
                   box_data=None) -> dict | None:
    """Start the transformer from ViT weights, as ViLT does: ``pretrain.encoder_init``'s contrastive
    stage (its ViT; shared with the dual-stream runs of the profile and seed) or ``checkpoints``'
    ``vision_checkpoint`` (a timm ViT). The text embeddings and heads start fresh (ViLT)."""
    init, model = params.pretrain.encoder_init, step.model
    if init.method == "none":
        return None
    if init.method == "checkpoints":
        if not init.vision_checkpoint:
            raise ParamsError("pretrain.encoder_init.method is 'checkpoints' but vision_checkpoint is not set: a single-stream "
                              "model starts from a ViT")
        load_timm_checkpoint(model.vision, init.vision_checkpoint)
        return {"vision_checkpoint": init.vision_checkpoint}
    trained, metrics = train_contrastive_encoders(params, pair_data, vocab_file, init_dir, box_data)
    missing, unexpected = model.vision.load_state_dict(trained.vision.state_dict(), strict=False)
    if unexpected or any(not key.startswith("selector.") for key in missing):
        raise ValueError(f"encoder init: its ViT does not fit the single-stream model (missing {missing}, unexpected {unexpected})")
    return metrics
