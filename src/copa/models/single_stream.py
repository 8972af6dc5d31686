"""COPA-S and ViLT (COPA §4.7, Table 6): one transformer over [text; image] tokens, with or
without the Text-aware Patch Detector inside it.

Layout (ViLT, Kim et al. 2021): the caption ([CLS] ... [SEP], padded) through BERT's embeddings
(word, position, LayerNorm), the image through the ViT's patch embedding with its class token and
position embeddings; a modality-type embedding (0 text, 1 image) added to each part; the sequence
[text; image] through the ViT's blocks with the text padding masked, then the ViT's final norm.
The pooled output tanh(W z_0) of the first token (the text [CLS] slot: ViLT's pooled token, the
"overall [CLS]") feeds the ITM head and the VQA classifier; the text positions feed the MLM head.
ViLT learns the text embeddings from scratch; they do here too.

The transformer *is* a :class:`~copa.models.vit.VisionEncoder`'s parameters (``vision``:
patch_embed, cls_token, pos_embed, blocks, norm, selector), so a timm ViT checkpoint or the
contrastive encoder init's ViT loads into it unchanged, as ViLT starts from ViT weights.

Selection (COPA-S): after layer k (``location``, the dual-stream TPD's place) the image part
[v_cls, v_1 .. v_n] becomes [v_cls, K kept, one fused] through the selectors of
``copa.models.selectors``; text tokens are never dropped. The TPD scores each patch from
concat(v_i, q) (COPA eq. 1) where q is (``tpd_query``):

- ``overall_cls``: the first token's state after layer k (COPA: "detect patches based on the
  overall [CLS] token"), which has attended to the text and the image for k layers;
- ``overall_and_text_cls``: concat(overall [CLS], text [CLS]), the text [CLS] being layer k's
  output of the text alone through layers 1..k, the single-stream analogue of the dual-stream
  TPD's text-encoder [CLS] (one more pass over the text tokens).

Where the TPD selects by [CLS] attention (the warm-up of Algorithm 1) and for ``cls_attention``
(the single-stream "w/o PTA"), the scores are the overall [CLS]'s head-mean attention to the
patches in layer k, padding masked. ``none`` is ViLT. With keep ratio 1.0 nothing is dropped and
COPA-S computes exactly what ViLT computes with the same weights (tests/test_single_stream.py).

The rest of the single-stream extension sits beside its dual-stream analogue, one layer each: the
pretraining losses in ``copa.models.single_stream_pretraining``, the builders from params in
``copa.train.build``, its ViT initialisation in ``copa.train.single_stream_pretrain`` and the VQA
head in ``copa.tasks.single_stream_vqa``; the registry ``copa.train.architectures`` names them
(``architecture: single_stream``; run names ``single-...``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn
from torch.nn import functional as F
from transformers.models.bert.modeling_bert import BertEmbeddings

from copa.models.decoder import LMHead
from copa.models.selectors import SelectorOutput, build_selector
from copa.models.text import BERT_DROPOUT, BERT_INIT_STD, additive_mask, bert_config, bert_init
from copa.models.vit import VisionEncoder

SELECTIONS = ("none", "tpd", "cls_attention")  # text_attention (TRIPS) reads a separate text encoder's [CLS]; oracle, random: dual-stream only
TPD_QUERIES = ("overall_cls", "overall_and_text_cls")


@dataclass(frozen=True)
class SingleStreamSpec:
    """Sizes and selection of a single-stream model. Defaults: ViT-B/16 at 256 px (COPA's
    pretraining resolution) with the TPD after layer 6 keeping 50% (COPA Table 6)."""

    vocab_size: int
    image_size: int = 256
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    pre_norm: bool = False
    activation: str = "gelu"
    pos_init: str = "trunc_normal"
    stem: str = "patch"
    init_std: float = BERT_INIT_STD  # the text embeddings' and heads' normal init (the joint transformer is the ViT: timm's)
    dropout: float = BERT_DROPOUT  # the text embeddings' dropout (the ViT's stays at timm's 0)
    max_text_length: int = 40
    selection: str = "tpd"
    location: int | Sequence[int] = 6
    keep_ratio: float = 0.5
    tpd_fusion: str = "softmax"  # the TPD's fused-token weights (COPA eq. 1); or "normalized"
    tpd_query: str = "overall_cls"
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"a single-stream model selects with one of {', '.join(SELECTIONS)}, not {self.selection!r}")
        if self.tpd_query not in TPD_QUERIES:
            raise ValueError(f"tpd_query {self.tpd_query!r}: expected one of {', '.join(TPD_QUERIES)}")
        if not isinstance(self.location, int) and len(tuple(self.location)) != 1:
            raise ValueError(f"a single-stream model selects at one location, got {self.location!r}")


def embed_image(vision: VisionEncoder, images: Tensor) -> Tensor:
    """The ViT's input tokens [v_cls, patches] (B, 1+n, D) of images (B, 3, H, W), position
    embeddings resampled to the image's grid (COPA Table 5's resolutions)."""
    x = vision.patch_embed(images)  # (B, h, w, D)
    b, h, w, d = x.shape
    pos = resample_abs_pos_embed(vision.pos_embed, [h, w], list(vision.patch_embed.grid_size), num_prefix_tokens=1)
    return vision.norm_pre(torch.cat([vision.cls_token.expand(b, -1, -1), x.reshape(b, h * w, d)], dim=1) + pos)


def cls_attention_to(block: nn.Module, x: Tensor, mask: Tensor, first: int) -> Tensor:
    """Head-mean attention weights of token 0 to the tokens ``first:`` (B, n) in ``block``'s
    self-attention of x (B, N, D), ``mask`` (B, 1, 1, N) additive: the query of token 0 and the
    keys, from the block's own qkv projection (timm ``Attention``, unfused)."""
    attn = block.attn
    d = attn.attn_dim
    h = block.norm1(x)
    bias = attn.qkv.bias
    q = F.linear(h[:, :1], attn.qkv.weight[:d], None if bias is None else bias[:d])  # (B, 1, D)
    k = F.linear(h, attn.qkv.weight[d:2 * d], None if bias is None else bias[d:2 * d])  # (B, N, D)
    b, n = x.shape[:2]
    q = attn.q_norm(q.view(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2))  # (B, h, 1, hd)
    k = attn.k_norm(k.view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2))  # (B, h, N, hd)
    weights = ((q * attn.scale) @ k.transpose(-2, -1) + mask).softmax(dim=-1)  # (B, h, 1, N)
    return weights.mean(dim=1)[:, 0, first:]


class SingleStreamModel(nn.Module):
    """COPA-S (selection ``tpd``), ViLT (``none``) or [CLS]-attention selection, by ``spec``.

    ``forward(images, input_ids, attention_mask)`` returns ``states`` (B, L + 1 + K(+1), D) after
    the final norm, the first L positions the text's; ``text_length`` L; ``scores`` (B, n) TPD
    scores of all patches (None without a TPD); ``kept`` (B, K) kept patch indices (all n
    without selection).
    """

    def __init__(self, spec: SingleStreamSpec):
        super().__init__()
        self.spec = spec
        d = spec.dim
        options = {} if spec.selection == "none" else {"keep_ratio": spec.keep_ratio}
        if spec.selection == "tpd":
            options.update(text_dim=d * (2 if spec.tpd_query == "overall_and_text_cls" else 1), fusion=spec.tpd_fusion)
        self.vision = VisionEncoder(build_selector(spec.selection, d, **options), spec.location, spec.image_size, spec.patch_size,
                                    d, spec.depth, spec.heads, pre_norm=spec.pre_norm, activation=spec.activation,
                                    pos_init=spec.pos_init, stem=spec.stem)
        sizes = dict(hidden_size=d, num_heads=spec.heads, intermediate_size=4 * d, dropout=spec.dropout)
        self.text_embeddings = BertEmbeddings(bert_config(vocab_size=spec.vocab_size, num_layers=1, pad_token_id=spec.pad_id,
                                                          max_position_embeddings=spec.max_text_length, **sizes))
        self.type_embeddings = nn.Embedding(2, d)  # 0: text, 1: image (ViLT's modality types)
        self.pooler = nn.Linear(d, d)
        self.itm_head = nn.Linear(d, 2)
        self.mlm_head = LMHead(bert_config(vocab_size=spec.vocab_size, num_layers=1, **sizes))
        for part in (self.text_embeddings, self.type_embeddings, self.pooler, self.itm_head, self.mlm_head):
            part.apply(bert_init(spec.init_std))

    @property
    def has_detector(self) -> bool:
        return self.spec.selection == "tpd"

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, use_detector: bool = True,
                until_selection: bool = False) -> dict[str, Tensor | int | None]:
        """``use_detector=False``: the TPD selects by [CLS] attention (Algorithm 1's warm-up) and
        still scores the patches; ``until_selection``: stop after the selection layer (the
        scores are all PTA needs)."""
        vision = self.vision
        text = self.text_embeddings(input_ids=input_ids) + self.type_embeddings.weight[0]  # (B, L, D)
        image = embed_image(vision, images) + self.type_embeddings.weight[1]  # (B, 1+n, D)
        b, length, n = text.shape[0], text.shape[1], image.shape[1] - 1
        x = torch.cat([text, image], dim=1)
        key_mask = torch.cat([attention_mask, attention_mask.new_ones(b, 1 + n)], dim=1)  # (B, L+1+n)
        kept, scores = torch.arange(n, device=x.device).expand(b, n), None
        for layer, block in enumerate(vision.blocks, start=1):
            mask = additive_mask(key_mask, x.dtype)
            if layer not in vision.locations or self.spec.selection == "none":
                x = block(x, attn_mask=mask)
                continue
            attention = cls_attention_to(block, x, mask, length + 1) if self._attention_selects(use_detector) else None
            x = block(x, attn_mask=mask)
            out = self._select(x, length, attention, input_ids, attention_mask, layer, use_detector)
            if out.kept is not None:
                kept = out.kept
            scores = out.scores
            x = torch.cat([x[:, :length], out.tokens], dim=1)
            key_mask = torch.cat([attention_mask, attention_mask.new_ones(b, out.tokens.shape[1])], dim=1)
            if until_selection:
                break
        return {"states": vision.norm(x), "text_length": length, "scores": scores, "kept": kept}

    def _attention_selects(self, use_detector: bool) -> bool:
        return self.spec.selection == "cls_attention" or not use_detector

    def _select(self, x: Tensor, length: int, attention: Tensor | None, input_ids: Tensor, attention_mask: Tensor,
                layer: int, use_detector: bool) -> SelectorOutput:
        """The image part of layer ``layer``'s output x, reduced by the selector."""
        selector, image = self.vision.selector, x[:, length:]
        if self.spec.selection == "cls_attention":
            return selector.select(image, attention)
        query = self._tpd_query(x, input_ids, attention_mask, layer)
        if use_detector:
            return selector.select_text(image, query, need_scores=True)
        return selector.select_by_attention(image, attention, query, need_scores=True)

    def _tpd_query(self, x: Tensor, input_ids: Tensor, attention_mask: Tensor, layer: int) -> Tensor:
        overall = x[:, 0]
        if self.spec.tpd_query == "overall_cls":
            return overall
        text = self.text_embeddings(input_ids=input_ids) + self.type_embeddings.weight[0]
        mask = additive_mask(attention_mask, text.dtype)
        for block in self.vision.blocks[:layer]:
            text = block(text, attn_mask=mask)
        return torch.cat([overall, text[:, 0]], dim=-1)

    def pooled(self, states: Tensor) -> Tensor:
        return torch.tanh(self.pooler(states[:, 0]))  # (B, D): ViLT's pooler on the first token

    def itm_logits(self, states: Tensor) -> Tensor:
        return self.itm_head(self.pooled(states))  # (B, 2)

    def mlm_logits(self, states: Tensor, text_length: int) -> Tensor:
        return self.mlm_head(states[:, :text_length])  # (B, L, V)


def single_stream_forward(model: SingleStreamModel, images: Tensor, input_ids: Tensor, attention_mask: Tensor,
                          part: Callable[[str], Any] = lambda name: nullcontext()) -> Tensor:
    """The forward (B pairs) whose costs copa.eval.efficiency counts: the joint states (B, L + image tokens, D)."""
    with part("transformer"):
        return model(images, input_ids, attention_mask)["states"]


def describe(model: SingleStreamModel) -> dict:
    """What an efficiency record says of the model: its sizes and parameter counts."""
    spec = model.spec
    return {"transformer": f"dim {spec.dim}, depth {spec.depth}, heads {spec.heads}, patch {spec.patch_size}", "tpd_query": spec.tpd_query,
            "vocab_size": spec.vocab_size,
            "parameters": {name: sum(p.numel() for p in part.parameters()) for name, part in (("transformer", model.vision), ("all", model))}}
