"""The single-stream pretraining run (COPA §4.7, Table 6): Algorithm 1's task of
``copa.train.pretrain`` (the same pairs, object samples, batches and schedule) with the
single-stream step of ``copa.models.single_stream_pretraining``, its transformer started from ViT
weights as ViLT's is (``copa pretrain`` with ``architecture: single_stream``).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from copa.config import Params, ParamsError
from copa.models.single_stream import SingleStreamModel
from copa.models.vit import load_timm_checkpoint
from copa.train.build import build_single_stream_pretraining
from copa.train.encoder_init import INIT_DIR, train_contrastive_encoders
from copa.train.engine import seed_everything
from copa.train.pretrain import PretrainTask, train_pretraining


class SingleStreamPretrainTask(PretrainTask):
    """Algorithm 1's task (the same pairs, object samples, batches and schedule), another model."""

    def build_model(self) -> nn.Module:
        seed_everything(self.params.seed)
        return build_single_stream_pretraining(self.params, self.tokenizer)


def initialise_vit(model: SingleStreamModel, params: Params, pair_data, vocab_file: Path, init_dir: Path) -> dict | None:
    """Start the transformer from ViT weights, as ViLT does: ``pretrain.encoder_init``'s contrastive
    stage (its ViT; shared with the dual-stream runs of the profile and seed) or ``checkpoints``'
    ``vision_checkpoint`` (a timm ViT). The text embeddings and heads start fresh (ViLT)."""
    init = params.pretrain.encoder_init
    if init.method == "none":
        return None
    if init.method == "checkpoints":
        if not init.vision_checkpoint:
            raise ParamsError("pretrain.encoder_init.method is 'checkpoints' but vision_checkpoint is not set: a single-stream "
                              "model starts from a ViT")
        load_timm_checkpoint(model.vision, init.vision_checkpoint)
        return {"vision_checkpoint": init.vision_checkpoint}
    trained, metrics = train_contrastive_encoders(params, pair_data, vocab_file, init_dir)
    missing, unexpected = model.vision.load_state_dict(trained.vision.state_dict(), strict=False)
    if unexpected or any(not key.startswith("selector.") for key in missing):
        raise ValueError(f"encoder init: its ViT does not fit the single-stream model (missing {missing}, unexpected {unexpected})")
    return metrics


def run_single_stream_pretraining(params: Params, data_root: Path, annotations: Path, out_dir: Path, resume: bool = True,
                                  init_dir: Path | None = None) -> dict:
    """COPA-S / ViLT pretraining into ``out_dir`` (``copa pretrain`` with ``architecture: single_stream``)."""
    task = SingleStreamPretrainTask(params, data_root, annotations, out_dir)
    init_dir = Path(init_dir) if init_dir is not None else Path(out_dir) / INIT_DIR
    initialise_vit(task.model.model, params, task.pair_data, task.vocab_file, init_dir)
    return train_pretraining(task, params, out_dir, resume)
