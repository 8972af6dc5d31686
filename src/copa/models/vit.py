"""COPA's visual encoder (ViT-TPD, COPA §3.1-3.2): a timm ViT with a pluggable token selector.

Built from timm's public parts with timm ``VisionTransformer``'s parameter names
(``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.{i}``, ``norm``), so a timm ViT
state dict loads directly (``load_timm_state_dict``). With the ``none`` selector the output is
``VisionTransformer.forward_features`` of the same weights. Layers are numbered from 1 as in
the papers: location k means "between layer k and k+1" for the TPD (``blocks[k-1]``'s output)
and "inside layer j" for TRIPS. Patch token i is grid cell (i // W, i % W), row-major, as in
``copa.data.patch_labels``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from timm.layers import GroupNorm1, HybridEmbed, LayerNorm, PatchEmbed, QuickGELU, resample_abs_pos_embed, trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, init_weights_vit_timm
from timm.models.vision_transformer_hybrid import ConvStem
from torch import nn

from copa.models.weights import read_state_dict

Tensor = torch.Tensor

# the MLP activation: timm's ViTs use GELU, OpenAI's CLIP ViTs (COPA's initialisation) QuickGELU
ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU}
# initialisations of the (learnt) patch position embeddings; a loaded checkpoint replaces either
POSITION_INITS = ("trunc_normal", "sincos")
# how pixels become patch tokens: ``patch``, one linear map of each patch (ViT, CLIP: the paper's) |
# ``conv``, a convolutional stem (below) | ``patch_and_conv``, the two summed (:class:`SummedStem`)
STEMS = ("patch", "conv", "patch_and_conv")


def conv_stem(img_size: int, patch_size: int, embed_dim: int) -> HybridEmbed:
    """Xiao et al. 2021 ("Early convolutions help transformers see better"): log2(patch_size)
    stride-2 convolutions, each with a norm and ReLU, widths doubling up to ``embed_dim``, then a 1x1
    convolution to ``embed_dim``: the same grid of tokens as the patch stem, each seeing a neighbourhood
    of about three patches (46 px at patch 16). A from-scratch ViT's stand-in for the local features a pretrained one brings
    (timm's ConvStem). The norm is one group over channels and positions (GroupNorm1), not BatchNorm: no
    batch statistics for the momentum encoder or DDP; not a per-position LayerNorm over channels either,
    which removes each pixel's brightness (measured: a patch's colour then read at 0.19). Measured on the
    demo world (contrastive init, 2,000 steps at 1e-4; linear probes of the tokens entering the selection,
    held-out objects): shape 0.37, row / column 0.49 / 0.51, colour 0.51, against the patch stem's 0.20,
    0.16 / 0.16, 0.87 (at 3e-4; at 3e-4 the conv stem's colour fell to 0.27)."""
    depth = patch_size.bit_length() - 1
    if patch_size != 2 ** depth or depth < 2 or embed_dim % 2 ** (depth - 1):
        raise ValueError(f"the conv stem needs a patch size that is a power of 2 (at least 4) and an embedding width divisible "
                         f"by {2 ** max(depth - 1, 0)}, got patch {patch_size}, width {embed_dim}")
    widths = tuple(embed_dim // 2 ** (depth - 1 - i) for i in range(depth))
    # 4x4 kernels, stride 2, padding 1: output i is centred on input pixels 2i and 2i+1, so token j is
    # centred on patch j (3x3 kernels centre it on the patch's corner, seeing patch j-1 as much as j)
    stem = ConvStem(3, depth=depth + 1, channels=(*widths, embed_dim), kernel_size=(4,) * depth + (1,),
                    stride=(2,) * depth + (1,), padding=(1,) * depth + (0,), norm_layer=GroupNorm1)
    return HybridEmbed(stem, img_size=img_size, patch_size=1, embed_dim=embed_dim, proj=False, output_fmt="NHWC",
                       strict_img_size=False)


class SummedStem(nn.Module):
    """The patch stem's linear map of each patch plus the conv stem's token for it (same grid, NHWC).
    Why: trained on the demo world the conv stem reads shape but loses colour at its own output
    (linear probes of its tokens, held-out objects, 1,000 contrastive steps: colour 0.57 at random
    weights -> 0.36 trained, shape 0.23 -> 0.49), where a linear map of the pixels keeps a patch's
    mean colour one linear read away; the sum gives the ViT both."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, bias: bool = True):
        super().__init__()
        self.patch = PatchEmbed(img_size, patch_size, 3, embed_dim, bias=bias, output_fmt="NHWC", strict_img_size=False)
        self.conv = conv_stem(img_size, patch_size, embed_dim)
        self.grid_size, self.num_patches = self.patch.grid_size, self.patch.num_patches

    def forward(self, images: Tensor) -> Tensor:
        return self.patch(images) + self.conv(images)


class VisionEncoder(nn.Module):
    """ViT with a token selector at ``location`` (COPA default: TPD at 6, keep ratio 50%).

    Args:
        img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio: the ViT (timm defaults:
            qkv bias, LayerNorm eps 1e-6, class token, position embedding over [CLS] + patches).
        selector: a module from ``copa.models.selectors`` (``build_selector``).
        location: selection layer(s): 1 <= k < depth for selectors acting after layer k,
            1 <= j <= depth for those acting inside layer j; an int, or several where the
            selector allows it (TRIPS [5, 10]).
        pre_norm: a LayerNorm on the embedded tokens before the first block (timm's ``norm_pre``)
            and a patch embedding without bias, as in CLIP's ViTs and timm's ``pre_norm=True``;
            activation: a key of ``ACTIVATIONS``.
        pos_init: ``trunc_normal`` (timm's, std 0.02) or ``sincos`` (2-D sine-cosine of the patch
            row and column, MoCo v3 / MAE, for ViTs trained from scratch; still learnt here).
        stem: a key of ``STEMS``: ``patch`` (ViT's), ``conv`` (:func:`conv_stem`) or ``patch_and_conv``
            (:class:`SummedStem`); no timm ViT checkpoint fits the last two.
    """

    def __init__(self, selector: nn.Module, location: int | Sequence[int] = 6,
                 img_size: int = 224, patch_size: int = 16, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 pre_norm: bool = False, activation: str = "gelu", pos_init: str = "trunc_normal", stem: str = "patch"):
        super().__init__()
        if pos_init not in POSITION_INITS:
            raise ValueError(f"pos_init {pos_init!r}: expected one of {', '.join(POSITION_INITS)}")
        if stem not in STEMS:
            raise ValueError(f"stem {stem!r}: expected one of {', '.join(STEMS)}")
        locations = (location,) if isinstance(location, int) else tuple(location)
        limit = selector.max_locations
        if not locations or (limit is not None and len(locations) > limit):
            raise ValueError(f"{type(selector).__name__} takes 1..{limit or 'any'} locations, "
                             f"got {location!r}")
        last = depth if selector.inside_block else depth - 1  # after-layer: 1 <= k < depth
        for k in locations:
            if not 1 <= k <= last:
                raise ValueError(f"location {k} outside 1..{last} for {type(selector).__name__} "
                                 f"with depth {depth}")
        self.locations = frozenset(locations)
        self.selector = selector
        if stem == "conv":
            self.patch_embed = conv_stem(img_size, patch_size, embed_dim)
        elif stem == "patch_and_conv":
            self.patch_embed = SummedStem(img_size, patch_size, embed_dim, bias=not pre_norm)
        else:
            self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim, bias=not pre_norm,  # CLIP: no bias
                                          output_fmt="NHWC", strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.norm_pre = LayerNorm(embed_dim) if pre_norm else nn.Identity()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm, act_layer=ACTIVATIONS[activation])
            for _ in range(depth)])
        self.norm = LayerNorm(embed_dim)
        # timm's init (VisionTransformer.init_weights, mode ''), selector included
        trunc_normal_(self.pos_embed, std=0.02)
        if pos_init == "sincos":  # [CLS] keeps a zero position, as in MoCo v3 / MAE
            with torch.no_grad():
                self.pos_embed.zero_()
                self.pos_embed[0, 1:] = build_sincos2d_pos_embed(list(self.patch_embed.grid_size), embed_dim)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(init_weights_vit_timm)

    def forward(self, images: Tensor, text_cls: Tensor | None = None,
                use_detector: bool = True, prefix: Tensor | None = None, need_scores: bool = False,
                targets: Tensor | None = None) -> dict[str, Tensor | None]:
        """Encode images (B, 3, H, W), guided by text_cls (B, D_text) where the selector uses it.

        Returns ``tokens`` (B, 1+K+1, D) after the final norm ((B, 1+n, D) without selection),
        ``scores`` (B, n) TPD alignment scores of all n patches (None for other selectors, and
        where the selection did not need them unless ``need_scores``: PTA and the probes ask),
        ``kept`` (B, K) original patch indices of the kept patch tokens (-1: a token fused at
        an earlier selection layer; all n without selection), and ``prefix`` (B, 1+n, D), the
        tokens entering the first selection layer. ``use_detector=False``: text-guided
        selectors select by image-[CLS] attention at the same place (COPA warm-up, captioning,
        coarse retrieval). ``prefix`` given (an earlier call's, for the same images): the layers
        before the selection, which no text changes, are not run again (the same images
        encoded under other texts, as ITM's pairs are). ``targets`` (B, n): the patches each
        text refers to, for the ``oracle`` selector (the others ignore them).
        """
        first = min(self.locations)
        if prefix is None:
            x = self.patch_embed(images)  # (B, h, w, D)
            b, h, w, d = x.shape
            # other resolutions (COPA Table 5): bicubic resample of the patch position embeddings
            pos = resample_abs_pos_embed(self.pos_embed, [h, w], list(self.patch_embed.grid_size),
                                         num_prefix_tokens=1)
            x = self.norm_pre(torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, h * w, d)], dim=1) + pos)
            for block in self.blocks[:first - 1]:
                x = block(x)
            prefix = x
        x = prefix
        b, n = x.shape[0], x.shape[1] - 1
        ids = torch.arange(n, device=x.device).expand(b, -1)  # original index of each token
        kept, scores = ids, None
        for layer, block in enumerate(self.blocks[first - 1:], start=first):
            if layer not in self.locations:
                x = block(x)
                continue
            out = self.selector(block, x, text_cls, use_detector, need_scores, targets)
            x = out.tokens
            scores = out.scores if out.scores is not None else scores
            if out.kept is not None:
                kept = ids.gather(1, out.kept)
                fused = x.shape[1] - 1 - kept.shape[1]  # 1 with a fused token, 0 without
                ids = torch.cat([kept, kept.new_full((b, fused), -1)], dim=1)
        return {"tokens": self.norm(x), "scores": scores, "kept": kept, "prefix": prefix}


def convert_timm_state_dict(state_dict: Mapping[str, Tensor], model: VisionEncoder
                            ) -> dict[str, Tensor]:
    """A timm ``VisionTransformer`` state dict -> this encoder's (pure function).

    Drops the classifier (``head.*``, ``fc_norm.*``) and resamples ``pos_embed`` when the
    checkpoint's grid differs from the model's. Selector parameters are not in timm checkpoints;
    the caller loads with ``strict=False`` for them (``load_timm_state_dict``).
    """
    out = {k: v for k, v in state_dict.items() if not k.startswith(("head.", "fc_norm."))}
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        out["pos_embed"] = resample_abs_pos_embed(pos, list(model.patch_embed.grid_size),
                                                  num_prefix_tokens=1)
    return out


def load_timm_state_dict(model: VisionEncoder, state_dict: Mapping[str, Tensor]) -> None:
    """Load timm ViT weights into ``model``; every ViT parameter must be present, none extra."""
    missing, unexpected = model.load_state_dict(convert_timm_state_dict(state_dict, model),
                                                strict=False)
    missing = [k for k in missing if not k.startswith("selector.")]
    if missing or unexpected:
        raise KeyError(f"timm state dict does not fit the encoder: missing {missing}, "
                       f"unexpected {unexpected}")


def load_timm_checkpoint(model: VisionEncoder, path: str | Path) -> None:
    """Load a local timm ViT checkpoint file (.safetensors, or a torch.save'd state dict)."""
    load_timm_state_dict(model, read_state_dict(path))
