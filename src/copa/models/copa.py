"""COPA's model (§3.1, on mPLUG): ViT with a patch selector, text encoder, skip-connected fusion,
decoder, and the heads the pretraining objectives read (ITC projections, ITM, MLM).

A composition of the parts in this package, tensors in and tensors out; the objectives
(copa.models.objectives) and Algorithm 1 (the pretraining engine) use the methods below.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from copa.models.decoder import Decoder, LMHead
from copa.models.fusion import SkipConnectedFusion
from copa.models.objectives.itc import Temperature
from copa.models.scene_tokens import SceneTokens
from copa.models.selectors import build_selector
from copa.models.text import BERT_DROPOUT, BERT_INIT_STD, TextEncoder, bert_config, bert_init
from copa.models.vit import VisionEncoder

TEXT_GUIDED = ("tpd", "text_attention")  # selectors that read the text [CLS]


@dataclass(frozen=True)
class CopaSpec:
    """Sizes and the selection of one COPA model. Defaults: the paper's (ViT-B/16 at 256 px, BERT-base
    split 6 + 6, 12-layer decoder, TPD after layer 6 keeping 50%)."""

    vocab_size: int
    image_size: int = 256
    patch_size: int = 16
    vision_dim: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    vision_pre_norm: bool = False  # CLIP's ViTs: True
    vision_activation: str = "gelu"  # OpenAI CLIP's ViTs: quick_gelu
    vision_pos_init: str = "trunc_normal"  # sincos: from scratch (a checkpoint replaces either)
    vision_stem: str = "patch"  # a key of copa.models.vit.STEMS
    text_dim: int = 768
    text_heads: int = 12
    text_intermediate: int = 3072
    text_layers: int = 6
    fusion_layers: int = 6
    fusion_stride: int = 3  # mPLUG: a connected-attention layer every 3 layers (6: co-attention only)
    decoder_layers: int = 12
    init_std: float = BERT_INIT_STD  # the normal init of the parts built from BERT's (text encoder, fusion, decoder, MLM head)
    dropout: float = BERT_DROPOUT  # the text encoder's, fusion's and decoder's hidden and attention dropout (the MLM head has none)
    max_text_length: int = 512
    embed_dim: int = 256  # ITC projection width (ALBEF)
    selection: str = "tpd"  # none | tpd | cls_attention | text_attention | oracle | random
    location: int | Sequence[int] = 6
    keep_ratio: float = 0.5
    tpd_fusion: str = "softmax"  # the TPD's fused-token weights (COPA eq. 1); or "normalized"
    pad_id: int = 0
    perception: str = "encoder"  # oracle: the scene's perfect image tokens in place of the ViT (copa.models.scene_tokens)
    scene_attributes: tuple[int, ...] = ()  # oracle: the number of values of each attribute of a scene grid


def spec_selector(spec: CopaSpec) -> nn.Module:
    """The selector ``spec`` describes (a fresh one: target recall builds it at other keep ratios)."""
    options = {} if spec.selection == "none" else {"keep_ratio": spec.keep_ratio}
    if spec.selection in TEXT_GUIDED:
        options["text_dim"] = spec.text_dim
    if spec.selection == "tpd":
        options["fusion"] = spec.tpd_fusion
    return build_selector(spec.selection, spec.vision_dim, **options)


class CopaModel(nn.Module):
    def __init__(self, spec: CopaSpec):
        super().__init__()
        self.spec = spec
        if spec.perception == "oracle":
            if not spec.scene_attributes:
                raise ValueError("perception oracle needs the scene's attributes (CopaSpec.scene_attributes)")
            self.vision = SceneTokens(spec.scene_attributes, spec.vision_dim)
        else:
            self.vision = VisionEncoder(
                spec_selector(spec), spec.location, spec.image_size, spec.patch_size,
                spec.vision_dim, spec.vision_depth, spec.vision_heads,
                pre_norm=spec.vision_pre_norm, activation=spec.vision_activation, pos_init=spec.vision_pos_init,
                stem=spec.vision_stem,
            )
        text_sizes = dict(hidden_size=spec.text_dim, num_heads=spec.text_heads, intermediate_size=spec.text_intermediate,
                          init_std=spec.init_std, dropout=spec.dropout)
        self.text = TextEncoder(vocab_size=spec.vocab_size, num_layers=spec.text_layers, max_position_embeddings=spec.max_text_length, pad_token_id=spec.pad_id, **text_sizes)
        self.fusion = SkipConnectedFusion(image_dim=spec.vision_dim, num_layers=spec.fusion_layers, stride=spec.fusion_stride, **text_sizes)
        self.decoder = Decoder(vocab_size=spec.vocab_size, num_layers=spec.decoder_layers, max_position_embeddings=spec.max_text_length, pad_token_id=spec.pad_id, **text_sizes)
        self.vision_proj = nn.Linear(spec.vision_dim, spec.embed_dim)
        self.text_proj = nn.Linear(spec.text_dim, spec.embed_dim)
        self.itm_head = nn.Linear(spec.text_dim, 2)
        self.mlm_head = LMHead(bert_config(vocab_size=spec.vocab_size, num_layers=1, hidden_size=spec.text_dim,
                                           num_heads=spec.text_heads, intermediate_size=spec.text_intermediate))
        self.mlm_head.apply(bert_init(spec.init_std))
        self.temperature = Temperature()

    @property
    def text_guided(self) -> bool:
        return self.spec.selection in TEXT_GUIDED

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text(input_ids, attention_mask)  # (B, L, H)

    def encode_image(self, images: Tensor, text_cls: Tensor | None = None, use_detector: bool = True,
                     prefix: Tensor | None = None, need_scores: bool = False, targets: Tensor | None = None) -> dict[str, Tensor | None]:
        """``images``: pixels, or with ``perception`` oracle the scene grids (copa.models.scene_tokens);
        ``text_cls`` guides the selection (TPD, TRIPS); ``use_detector=False`` selects by image-[CLS]
        attention instead (COPA's warm-up, and the text-free uses: captioning, coarse retrieval);
        ``prefix``: an earlier call's for the same images; ``need_scores``: the TPD's scores even
        where the selection does not use them; ``targets`` (B, n): the patches each text refers to,
        which the oracle selector keeps and the others ignore (see ``VisionEncoder.forward``)."""
        return self.vision(images, text_cls if self.text_guided else None, use_detector, prefix, need_scores, targets)

    def fuse(self, image_tokens: Tensor, text_states: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        image_mask = torch.ones(image_tokens.shape[:2], dtype=text_mask.dtype, device=image_tokens.device)  # (B, Li)
        return self.fusion(image_tokens, image_mask, text_states, text_mask)  # (B, Li, H), (B, Lt, H)

    def image_feature(self, image_tokens: Tensor) -> Tensor:
        return F.normalize(self.vision_proj(image_tokens[:, 0]), dim=-1)  # (B, E): image [CLS]

    def text_feature(self, text_states: Tensor) -> Tensor:
        return F.normalize(self.text_proj(text_states[:, 0]), dim=-1)  # (B, E): text [CLS]

    def itm_logits(self, fused_text: Tensor) -> Tensor:
        return self.itm_head(fused_text[:, 0])  # (B, 2): on the fused text [CLS]

    def mlm_logits(self, fused_text: Tensor) -> Tensor:
        return self.mlm_head(fused_text)  # (B, L, V)

    def decode(self, input_ids: Tensor, attention_mask: Tensor, fused_image: Tensor, fused_text: Tensor, text_mask: Tensor) -> Tensor:
        """Decoder logits (B, L, V) attending to the fused [image, text] states (mPLUG)."""
        states = torch.cat([fused_image, fused_text], dim=1)  # (B, Li + Lt, H)
        image_mask = torch.ones(fused_image.shape[:2], dtype=text_mask.dtype, device=fused_image.device)
        return self.decoder(input_ids, attention_mask, states, torch.cat([image_mask, text_mask], dim=1))


def understanding_forward(model: CopaModel, images: Tensor, input_ids: Tensor, attention_mask: Tensor,
                          part: Callable[[str], Any] = lambda name: nullcontext()) -> Tensor:
    """The VQA-style forward (B pairs) whose costs copa.eval.efficiency counts: text, image guided
    by the text [CLS], fusion -> fused text (B, L, H). ``part(name)`` is a context entered around
    each of text / vision / fusion. The oracle gets targets of no patch: it keeps K all the same, at
    any selector's cost."""
    grid = images.shape[-1] // model.spec.patch_size
    targets = images.new_zeros(images.shape[0], grid * grid, dtype=torch.bool) if model.spec.selection == "oracle" else None
    with part("text"):
        text = model.encode_text(input_ids, attention_mask)  # (B, L, H)
    with part("vision"):
        image = model.encode_image(images, text[:, 0], use_detector=True, targets=targets)["tokens"]  # (B, 1+K+1, D)
    with part("fusion"):
        _, fused = model.fuse(image, text, attention_mask)
    return fused


def describe(model: CopaModel) -> dict:
    """What an efficiency record says of the model: its sizes and parameter counts."""
    spec = model.spec
    return {"vision": f"ViT dim {spec.vision_dim}, depth {spec.vision_depth}, heads {spec.vision_heads}, patch {spec.patch_size}",
            "text_layers": spec.text_layers, "fusion_layers": spec.fusion_layers, "text_dim": spec.text_dim, "vocab_size": spec.vocab_size,
            "parameters": {name: sum(p.numel() for p in part.parameters())
                           for name, part in (("vision", model.vision), ("text", model.text), ("fusion", model.fusion), ("all", model))}}
