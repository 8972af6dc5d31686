"""COPA's pretraining step (Algorithm 1, eq. 4): PTA on an object mini-batch plus ITC, ITM, MLM
and PrefixLM on an image-text mini-batch, summed, for one backward and one update.

``CopaPretraining.forward(batch) -> dict`` with the total ``loss`` and every term and metric,
so a generic training loop (and DDP) can drive it. The choices the papers leave open are
constructor options (params/ names them):
- ``itc_image``: the image features ITC contrasts. ``text_free`` (default): selected by
  image-[CLS] attention, the features COPA's retrieval ranks with (Appendix E: the coarse stage
  is text-free), so that training and inference contrast the same feature; ``paired_text``: the
  image encoded once, its selection guided by its own caption (one pass).
- MLM and PrefixLM: the selection is guided by the text each objective sees (the masked caption,
  the prefix), never by the whole caption, whose words the kept patches would otherwise carry.
  Each text-guided pass reuses the layers before the selection.
- ``itm_guidance``: the text that guides the selection for an ITM pair. ``own_caption``
  (default): negatives reuse the image tokens selected by the image's own caption, as Algorithm 1
  (line 10) runs one forward for ITC, ITM, MLM and PrefixLM and Figure 3 finds the memory
  independent of the detection location (the selection then carries a trace of the positive
  caption); ``pair_text``: every negative pair is re-encoded with its text after the layers
  before the selection, as COPA's ITM re-ranking re-extracts image features per candidate text
  at retrieval inference (Appendix E): its memory grows with the layers after the selection.
- ``itm_negative_sharpness``: how strongly ITM's in-batch negatives prefer the ITC-similar ones,
  softmax(sharpness x similarity): 1 is ALBEF's hard-negative draw (COPA Appendix B), 0 a uniform
  draw (random negatives).
- the warm-up (§3.3): images are selected by image-[CLS] attention until the detector takes
  over, after ``switch_steps`` steps or once the running PTA loss is under ``switch_pta_loss``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from copa.models.copa import CopaModel
from copa.models.objectives import SHARED_SCOPE, objective_scope, pretrain_loss
from copa.models.objectives.itc import FeatureQueue, copy_to_momentum, gather_features, itc_loss, momentum_update
from copa.models.objectives.itm import itm_loss, itm_pairs, sample_hard_negatives
from copa.models.objectives.language import lm_loss, mask_tokens, mlm_loss, prefix_lm_split
from copa.models.objectives.pta import patch_precision_recall, pta_loss

MOMENTUM_PARTS = ("vision", "text", "vision_proj", "text_proj")  # ALBEF: the unimodal encoders + projections


class CopaPretraining(nn.Module):
    def __init__(
        self,
        model: CopaModel,
        *,
        vocab_size: int,
        mask_id: int,
        special_ids: Sequence[int],
        pad_id: int = 0,
        queue_size: int = 65_536,
        momentum: float = 0.995,
        distill_alpha: float = 0.4,
        mlm_probability: float = 0.15,
        loss_weights: Mapping[str, float] | None = None,
        itc_image: Literal["paired_text", "text_free"] = "text_free",
        itm_guidance: Literal["pair_text", "own_caption"] = "own_caption",
        itm_negative_sharpness: float = 1.0,
        switch_rule: Literal["steps", "pta_loss"] = "steps",
        switch_steps: int = 1000,
        switch_pta_loss: float = 0.3,
    ):
        super().__init__()
        self.model = model
        # The momentum copy of the unimodal parts (ALBEF); frozen, moved by momentum_update.
        self.model_m = nn.ModuleDict({name: copy.deepcopy(getattr(model, name)) for name in MOMENTUM_PARTS})
        copy_to_momentum(self._online_parts(), self.model_m)
        # queue_size 0: in-batch negatives only (the demo: from scratch, with a queue, held-out
        # retrieval stayed at chance; params/profiles/demo.yaml has the measurement)
        self.queue = FeatureQueue(model.spec.embed_dim, queue_size) if queue_size > 0 else None
        self.vocab_size, self.mask_id, self.special_ids, self.pad_id = vocab_size, mask_id, tuple(special_ids), pad_id
        self.momentum, self.distill_alpha, self.mlm_probability = momentum, distill_alpha, mlm_probability
        self.loss_weights = dict(loss_weights or {})
        self.itc_image, self.itm_guidance, self.itm_negative_sharpness = itc_image, itm_guidance, itm_negative_sharpness
        self.switch_rule, self.switch_steps, self.switch_pta_loss = switch_rule, switch_steps, switch_pta_loss
        # In buffers, so a checkpoint carries them and a resumed run keeps its warm-up state.
        self.register_buffer("detector_on", torch.tensor(False))
        self.register_buffer("pta_running", torch.tensor(float("nan")))
        self.last_pta: float | None = None

    def _online_parts(self) -> nn.ModuleDict:
        return nn.ModuleDict({name: getattr(self.model, name) for name in MOMENTUM_PARTS})

    @torch.no_grad()
    def sync_momentum(self) -> None:
        """Copy the online encoders into the momentum ones (after loading initial weights)."""
        copy_to_momentum(self._online_parts(), self.model_m)

    # ------------------------------------------------------------------ the step
    def forward(self, batch: Mapping[str, Mapping[str, Tensor] | int]) -> dict[str, Tensor]:
        """``batch``: ``pairs`` (images, input_ids, attention_mask, image_ids (B,): equal for pairs
        of one image), ``objects`` (images, input_ids, attention_mask, patch_labels (B_O, n)) and
        ``seed`` (an int: the step's draws of masks, prefixes and negatives, so a step is reproducible)."""
        generator = torch.Generator(device="cpu").manual_seed(int(batch["seed"]))
        use_detector = bool(self.detector_on)
        terms, metrics = self._pair_terms(batch["pairs"], use_detector, generator)
        pta, pta_metrics = self._pta(batch["objects"], use_detector)
        if pta is not None:
            terms["pta"] = pta
            self.last_pta = float(pta.detach())  # for the warm-up rule, read by after_step
        total = pretrain_loss(terms, self.loss_weights)
        return {"loss": total, **{k: v.detach() for k, v in terms.items()}, **metrics, **pta_metrics}

    def _pair_terms(self, pairs: Mapping[str, Tensor], use_detector: bool, generator: torch.Generator) -> tuple[dict, dict]:
        m = self.model
        images, ids, mask = pairs["images"], pairs["input_ids"], pairs["attention_mask"]
        with objective_scope(SHARED_SCOPE):
            text = m.encode_text(ids, mask)  # (B, L, H)
            encoded = m.encode_image(images, text[:, 0], use_detector)
        image = encoded["tokens"]  # (B, Li, D): the selection guided by the caption

        drops = encoded["kept"].shape[1] < encoded["prefix"].shape[1] - 1  # keeping every patch ("w/o TPD"): no text matters

        def image_under(text_cls: Tensor | None) -> Tensor:
            """The images' tokens with the selection guided by ``text_cls`` (None: image-[CLS]
            attention), from the layers before the selection that no text changes (run once,
            above). Without a text-read selection that drops patches (no detector, the warm-up,
            keep 100%) that is ``image``."""
            if not (m.text_guided and use_detector and drops):
                return image
            return m.encode_image(images, text_cls, use_detector=text_cls is not None, prefix=encoded["prefix"])["tokens"]

        with objective_scope("itc"):
            itc_tokens = image if self.itc_image == "paired_text" else image_under(None)
            image_feat, text_feat = m.image_feature(itc_tokens), m.text_feature(text)  # (B, E)
            with torch.no_grad():  # momentum features (ALBEF)
                mm = self.model_m
                text_m = mm["text"](ids, mask)
                guide = text_m[:, 0] if self.itc_image == "paired_text" and m.text_guided else None
                image_m = mm["vision"](images, guide, use_detector if guide is not None else False)["tokens"]
                image_feat_m = nn.functional.normalize(mm["vision_proj"](image_m[:, 0]), dim=-1)
                text_feat_m = nn.functional.normalize(mm["text_proj"](text_m[:, 0]), dim=-1)
            temperature = m.temperature()  # clamps in place: once per step, before the graph uses it
            itc = itc_loss(image_feat, text_feat, image_feat_m, text_feat_m, self.queue, temperature, self.distill_alpha)
            if self.queue is not None:
                with torch.no_grad():
                    self.queue.enqueue(gather_features(image_feat_m), gather_features(text_feat_m))

        # ITM: positives and one hard negative per image and per text (ALBEF), never a pair of the
        # same image: its other caption matches it. ALBEF's pretraining does not mask these, rare in a
        # batch drawn from millions of pairs; not in a small world's (README: 15% of the demo's batches)
        with objective_scope("itm"):
            neg_text, neg_image = sample_hard_negatives(itc.sim_i2t, itc.sim_t2i, generator, ids=pairs["image_ids"],
                                                        sharpness=self.itm_negative_sharpness)
            image_idx, text_idx, labels = itm_pairs(neg_text, neg_image)
            if self.itm_guidance == "pair_text" and m.text_guided and use_detector and len(labels) > len(images):
                # the positives are `image`; each negative pair is encoded under its text, from the
                # layers before the selection that no text changes (computed once, above). In the
                # warm-up, [CLS] attention selects whatever the text: `image` serves every pair.
                b = len(images)
                negatives = m.encode_image(images[image_idx[b:]], text[text_idx[b:], 0], use_detector,
                                           prefix=encoded["prefix"][image_idx[b:]])["tokens"]
                itm_image = torch.cat([image, negatives])
            else:
                itm_image = image[image_idx]
            _, itm_text = m.fuse(itm_image, text[text_idx], mask[text_idx])
            itm = itm_loss(m.itm_logits(itm_text), labels)

        # MLM on the fused text of the masked caption. The selection reads the masked caption too:
        # guided by the whole one, the kept patches would carry the words to predict.
        with objective_scope("mlm"):
            masked, mlm_labels = mask_tokens(ids, mask, self.vocab_size, self.mask_id, self.special_ids, self.mlm_probability, generator)
            masked_text = m.encode_text(masked, mask)
            _, fused_masked = m.fuse(image_under(masked_text[:, 0]), masked_text, mask)
            mlm = mlm_loss(m.mlm_logits(fused_masked), mlm_labels)

        # PrefixLM: the decoder continues the caption from a random prefix (mPLUG); the selection
        # reads the prefix alone, for the same reason
        with objective_scope("prefix"):
            split = prefix_lm_split(ids, mask, generator, pad_id=self.pad_id)
            prefix_text = m.encode_text(split.prefix_ids, split.prefix_mask)
            fused_image, fused_prefix = m.fuse(image_under(prefix_text[:, 0]), prefix_text, split.prefix_mask)
            logits = m.decode(split.target_ids, split.target_mask, fused_image, fused_prefix, split.prefix_mask)
            prefix = lm_loss(logits, split.target_ids, split.target_mask)

        metrics = {"itm_examples": torch.tensor(float(len(labels))), "temperature": temperature.detach()}
        return {"itc": itc.loss, "itm": itm, "mlm": mlm, "prefix": prefix}, metrics

    def _pta(self, objects: Mapping[str, Tensor], use_detector: bool) -> tuple[Tensor | None, dict]:
        """COPA eq. 3 on the object mini-batch: the detector's scores of all patches vs the labels.
        The scores exist in warm-up too (selection then follows [CLS] attention)."""
        m = self.model
        with objective_scope("pta"):
            text = m.encode_text(objects["input_ids"], objects["attention_mask"])
            scores = m.encode_image(objects["images"], text[:, 0], use_detector, need_scores=True)["scores"]
            if scores is None:  # no detector (w/o PTA, the baselines): the term is left out
                return None, {}
            labels = objects["patch_labels"]
            quality = patch_precision_recall(scores.detach(), labels)
            metrics = {f"pta_{name}": torch.as_tensor(float(value)) for name, value in quality._asdict().items()}
            return pta_loss(scores, labels), metrics

    # ------------------------------------------------------------------ after each optimiser step
    @torch.no_grad()
    def after_step(self, step: int, pta: float | None = None) -> None:
        """Momentum update (ALBEF) and the warm-up switch (COPA §3.3); ``pta``: the step's PTA loss
        (default: the one the last forward computed)."""
        momentum_update(self._online_parts(), self.model_m, self.momentum)
        advance_warm_up(self, step, self.last_pta if pta is None else pta)


@torch.no_grad()
def advance_warm_up(step_module: nn.Module, step: int, pta: float | None) -> None:
    """COPA §3.3's switch from [CLS]-attention selection to the detector, after optimiser step
    ``step`` of a pretraining step module (this one, or the single-stream one) with buffers
    ``detector_on`` and ``pta_running`` (the PTA loss's running mean, fed ``pta`` when there is
    one) and settings ``switch_rule``, ``switch_steps``, ``switch_pta_loss``."""
    if pta is not None:
        previous = step_module.pta_running
        step_module.pta_running.fill_(pta if torch.isnan(previous) else 0.98 * float(previous) + 0.02 * pta)
    if not step_module.detector_on:
        rule = step_module.switch_rule
        done = step + 1 >= step_module.switch_steps if rule == "steps" else bool(step_module.pta_running < step_module.switch_pta_loss)
        step_module.detector_on.fill_(done)

