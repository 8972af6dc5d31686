"""Pretraining of the single-stream models (COPA §4.7): ViLT's ITM and MLM on the image-text
pairs, plus COPA's PTA on the object mini-batch for COPA-S (Algorithm 1's object batch, eq. 3),
summed (eq. 4) for one backward and one update; driven by the same engine and data as
``copa.train.pretrain`` (``copa.train.single_stream_pretrain``: its task with another model; built
from params by ``copa.train.build.build_single_stream_pretraining``).

What a single-stream model cannot have: ITC (no unimodal encoders to contrast) and PrefixLM (no
decoder). Choices (ViLT's where it gives them):

- ITM negatives: each pair's image is replaced by another image of the batch with probability
  ``single_stream.itm_swap_probability`` (ViLT: 0.5); no hard negatives, which need ITC's
  similarities. A swap that brings another pair's copy of the same image (``image_ids``) is labelled
  a match: it is one.
- MLM runs on the masked caption with its image, a second pass (ViLT's too), so the selection is
  guided by the masked caption there.
- PTA: the caption "This is a <label>." of each object image guides the TPD; the scores come from
  the layers up to the detector only (nothing after it affects them).
- The warm-up (COPA §3.3) as in the dual-stream step: [CLS]-attention selection until the TPD
  takes over after ``pretrain.warm_up``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from copa.models.objectives import pretrain_loss
from copa.models.objectives.itm import itm_loss
from copa.models.objectives.language import mask_tokens, mlm_loss
from copa.models.objectives.pta import patch_precision_recall, pta_loss
from copa.models.pretraining import advance_warm_up
from copa.models.single_stream import SingleStreamModel


class SingleStreamPretraining(nn.Module):
    def __init__(self, model: SingleStreamModel, *, vocab_size: int, mask_id: int, special_ids: Sequence[int],
                 mlm_probability: float = 0.15, itm_swap_probability: float = 0.5, loss_weights: Mapping[str, float] | None = None,
                 switch_rule: Literal["steps", "pta_loss"] = "steps", switch_steps: int = 1000, switch_pta_loss: float = 0.3):
        super().__init__()
        if not 0.0 <= itm_swap_probability <= 1.0:
            raise ValueError(f"single_stream.itm_swap_probability must be in [0, 1], got {itm_swap_probability}")
        self.model = model
        self.vocab_size, self.mask_id, self.special_ids = vocab_size, mask_id, tuple(special_ids)
        self.mlm_probability, self.itm_swap_probability = mlm_probability, itm_swap_probability
        self.loss_weights = dict(loss_weights or {})
        self.switch_rule, self.switch_steps, self.switch_pta_loss = switch_rule, switch_steps, switch_pta_loss
        # buffers, as in CopaPretraining: a checkpoint carries the warm-up state
        self.register_buffer("detector_on", torch.tensor(False))
        self.register_buffer("pta_running", torch.tensor(float("nan")))
        self.last_pta: float | None = None

    def forward(self, batch: Mapping) -> dict[str, Tensor]:
        """``batch``: ``pairs`` (images, input_ids, attention_mask, image_ids), ``objects`` (images,
        input_ids, attention_mask, patch_labels) and ``seed`` (the step's draws of swaps and masks)."""
        generator = torch.Generator(device="cpu").manual_seed(int(batch["seed"]))
        m, use_detector = self.model, bool(self.detector_on)
        pairs = batch["pairs"]
        images, ids, mask = pairs["images"], pairs["input_ids"], pairs["attention_mask"]

        # ITM (ViLT): label 1 where the pair keeps its image, or gets another pair's copy of it
        swapped = self.swap_images(len(images), generator).to(ids.device)
        out = m(images[swapped], ids, mask, use_detector)
        image_ids = pairs["image_ids"]
        terms = {"itm": itm_loss(m.itm_logits(out["states"]), (image_ids[swapped] == image_ids).long())}

        masked, labels = mask_tokens(ids, mask, self.vocab_size, self.mask_id, self.special_ids, self.mlm_probability, generator)
        out = m(images, masked, mask, use_detector)
        terms["mlm"] = mlm_loss(m.mlm_logits(out["states"], out["text_length"]), labels)

        metrics = {}
        if m.has_detector:  # COPA eq. 3 on the object mini-batch
            objects = batch["objects"]
            scores = m(objects["images"], objects["input_ids"], objects["attention_mask"], use_detector, until_selection=True)["scores"]
            terms["pta"] = pta_loss(scores, objects["patch_labels"])
            self.last_pta = float(terms["pta"].detach())
            quality = patch_precision_recall(scores.detach(), objects["patch_labels"])
            metrics = {f"pta_{name}": torch.as_tensor(float(value)) for name, value in quality._asdict().items()}
        total = pretrain_loss(terms, self.loss_weights)
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}, **metrics}

    def swap_images(self, batch: int, generator: torch.Generator) -> Tensor:
        """Each pair's image index: its own, or with ``itm_swap_probability`` another of the batch."""
        own = torch.arange(batch)
        if batch < 2:
            return own
        swap = torch.rand(batch, generator=generator) < self.itm_swap_probability
        other = (own + torch.randint(1, batch, (batch,), generator=generator)) % batch  # never itself
        return torch.where(swap, other, own)

    @torch.no_grad()
    def after_step(self, step: int, pta: float | None = None) -> None:
        """The warm-up switch (COPA §3.3) as in the dual-stream step; no momentum encoder here."""
        advance_warm_up(self, step, self.last_pta if pta is None else pta)
