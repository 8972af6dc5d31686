"""Token selectors for the visual encoder: none, COPA's TPD, image-[CLS] attention, TRIPS, and
two references that bracket them: the oracle (the patches of what the text refers to) and random.

A selector is called by ``VisionEncoder`` at each of its selection layers with the timm
``Block`` of that layer, the block's input ``x`` (B, 1+n, D) ([CLS] first), the text [CLS]
``text_cls`` (B, D_text) or None, and ``targets`` (B, n), the patches each example's text refers
to (read by the oracle only; None elsewhere); it runs the block itself, because where the selection sits
differs: the TPD and ``cls_attention`` act on the block's output (COPA §3.2: "between the k-th
and (k+1)-th layer"), TRIPS acts inside the block, between self-attention and the FFN (TRIPS
§3.2). It returns ``SelectorOutput(tokens, kept, scores)``:

- ``tokens`` (B, 1+K+1, D): [image CLS, K kept patches, one fused token]; (B, 1+n, D)
  unchanged when K = n, and (B, 1+K, D) with ``fusion="drop"``;
- ``kept`` (B, K): positions of the kept patches among the n input patch tokens (None: no
  selection happened);
- ``scores`` (B, n): TPD alignment scores a_i (None for every other selector, and for the TPD
  when the selection did not need them and the caller did not ask: ``need_scores``).

Open choices of the papers, each a named option (defaults in the constructors):

- ``rounding`` of K = n * keep_ratio: "round" (half up), "floor" or "ceil". COPA writes
  K = n * alpha, which is an integer for its settings only at 50%; EViT (which TRIPS follows)
  uses ceil.
- ``keep_order``: kept patches in their spatial order (True) or by decreasing score.
- ``fusion``, the weights of the fused token over the n-K dropped patches: "softmax" of their
  scores (COPA eq. 1), "normalized" (scores / their sum), "raw" (the scores themselves, not
  renormalised: TRIPS eq. 3 and EViT), "uniform" (the mean of the dropped patches: the selectors
  without scores, oracle and random) or "drop" (no fused token: TRIPS "w/o ITF").
- ``use_detector=False`` (forward argument): the text-guided selectors fall back to image-[CLS]
  attention at the same place (COPA's warm-up and text-free uses; TRIPS "w/o TD-ATT").

Gradient path of the TPD: top-K is not differentiable, and kept tokens are gathered unchanged
(COPA keeps them as they are), so they carry no gradient to the TPD MLP. The MLP gets gradient
from the PTA loss through ``scores`` and from every downstream loss through the softmax weights
of the fused token (eq. 1-2).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

Tensor = torch.Tensor


class SelectorOutput(NamedTuple):
    tokens: Tensor  # (B, 1+K+1, D)
    kept: Tensor | None  # (B, K) positions among the n input patches
    scores: Tensor | None  # (B, n) TPD scores a_i


# K = n * keep_ratio; round(..., 9) first so that 0.7 * 10 = 7.000000000000001 is 7 for ceil.
ROUNDINGS: dict[str, Callable[[float], float]] = {
    "round": lambda x: math.floor(x + 0.5),  # half up, not Python's half-to-even
    "floor": math.floor,
    "ceil": math.ceil,
}

FUSIONS: dict[str, Callable[[Tensor], Tensor] | None] = {
    "softmax": lambda s: s.softmax(dim=-1),  # COPA eq. (1)
    "normalized": lambda s: s / s.sum(dim=-1, keepdim=True).clamp_min(1e-12),
    "raw": lambda s: s,  # TRIPS eq. (3), EViT
    "uniform": lambda s: torch.full_like(s, 1.0 / s.shape[-1]),  # no scores to weigh by: oracle, random
    "drop": None,  # TRIPS "w/o ITF"
}


def num_keep(n: int, keep_ratio: float, rounding: str) -> int:
    """K, the number of patches kept out of n (0 <= K <= n)."""
    return int(min(n, max(0, ROUNDINGS[rounding](round(n * keep_ratio, 9)))))


def select_and_fuse(
    x: Tensor, scores: Tensor, keep: int, keep_order: bool, fusion: str
) -> SelectorOutput:
    """Keep the top-``keep`` patches of x (B, 1+n, D) by scores (B, n), fuse the rest into one.

    Ties are broken by patch index (stable sort), so the selection is deterministic.
    """
    cls_tok, patches = x[:, :1], x[:, 1:]  # (B, 1, D), (B, n, D)
    n = patches.shape[1]
    if keep >= n:  # nothing to fuse: the sequence is unchanged (keep_ratio 1.0 == no selection)
        return SelectorOutput(x, torch.arange(n, device=x.device).expand(x.shape[0], n), None)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (B, n)
    kept, dropped = order[:, :keep], order[:, keep:]  # (B, K), (B, n-K)
    if keep_order:
        kept = kept.sort(dim=1).values
    d = patches.shape[-1]
    parts = [cls_tok, patches.gather(1, kept.unsqueeze(-1).expand(-1, -1, d))]
    weigh = FUSIONS[fusion]
    if weigh is not None:
        w = weigh(scores.gather(1, dropped))  # (B, n-K)   COPA eq. (1) / TRIPS eq. (3)
        v_z = patches.gather(1, dropped.unsqueeze(-1).expand(-1, -1, d))  # (B, n-K, D)
        parts.append((w.unsqueeze(-1) * v_z).sum(dim=1, keepdim=True))  # COPA eq. (2)
    return SelectorOutput(torch.cat(parts, dim=1), kept, None)


def attention_half(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """First half of a timm ``Block`` (x + attn(norm1(x))), computed unfused to expose weights.

    Returns (x after the attention residual (B, N, D), attention weights (B, h, N, N), keys
    (B, h, N, hd)); matches ``Block.forward``'s attention half (timm's ``Attention.forward``
    with ``fused_attn=False``), gated attention excepted.
    """
    attn = block.attn
    b, t, _ = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(b, t, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
    out = (attn.attn_drop(weights) @ v).transpose(1, 2).reshape(b, t, attn.attn_dim)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    return x + block.drop_path1(block.ls1(out)), weights, k


def mlp_half(block: nn.Module, x: Tensor) -> Tensor:
    """Second half of a timm ``Block``: x + mlp(norm2(x))."""
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def cls_attention_scores(weights: Tensor) -> Tensor:
    """Image-[CLS] attention to the n patches (B, n) from weights (B, h, N, N), head-mean."""
    return weights[:, :, 0, 1:].mean(dim=1)


class Selector(nn.Module):
    """Base: keep-ratio options shared by the selecting variants."""

    #: how many selection layers the selector supports (None: any number)
    max_locations: int | None = None
    #: True: selects inside its layer (after attention, before the FFN); False: after it
    inside_block: bool = False

    def __init__(self, keep_ratio: float, rounding: str, keep_order: bool, fusion: str):
        super().__init__()
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {sorted(ROUNDINGS)}, got {rounding!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {sorted(FUSIONS)}, got {fusion!r}")
        self.keep_ratio, self.rounding = keep_ratio, rounding
        self.keep_order, self.fusion = keep_order, fusion

    def select(self, x: Tensor, scores: Tensor) -> SelectorOutput:
        keep = num_keep(x.shape[1] - 1, self.keep_ratio, self.rounding)
        return select_and_fuse(x, scores, keep, self.keep_order, self.fusion)

    def extra_repr(self) -> str:
        return (f"keep_ratio={self.keep_ratio}, rounding={self.rounding!r}, "
                f"keep_order={self.keep_order}, fusion={self.fusion!r}")


class NoSelection(nn.Module):
    """Identity selector: runs the block unchanged (STYLE 7: same code path, no flags)."""

    max_locations = None
    inside_block = False

    def __init__(self, embed_dim: int):  # embed_dim: the uniform SELECTORS constructor
        super().__init__()

    def forward(self, block: nn.Module, x: Tensor, text_cls: Tensor | None = None,
                use_detector: bool = True, need_scores: bool = False, targets: Tensor | None = None) -> SelectorOutput:
        return SelectorOutput(block(x), None, None)


class ClsAttentionSelector(Selector):
    """Selection by the image [CLS] attention to the patches (COPA "w/o PTA" and warm-up; EViT).

    The score of patch i is the head-mean attention weight of [CLS] to patch i in the selection
    layer (softmax over all N tokens, [CLS] included, as in EViT). ``inside_block=False``
    selects on the block output (the TPD's place, COPA Table 10); ``inside_block=True`` between
    the block's attention and FFN (EViT; TRIPS "w/o TD-ATT"). Default fusion "normalized":
    attention weights are ~1/n, so their softmax would be almost uniform; renormalising keeps
    the fused token a convex combination like the TPD's. No parameters.
    """

    def __init__(self, embed_dim: int, keep_ratio: float = 0.5, rounding: str = "round",
                 keep_order: bool = True, fusion: str = "normalized", inside_block: bool = False):
        super().__init__(keep_ratio, rounding, keep_order, fusion)
        self.inside_block = inside_block

    def forward(self, block: nn.Module, x: Tensor, text_cls: Tensor | None = None,
                use_detector: bool = True, need_scores: bool = False, targets: Tensor | None = None) -> SelectorOutput:
        x, weights, _ = attention_half(block, x)
        if self.inside_block:
            out = self.select(x, cls_attention_scores(weights))
            return out._replace(tokens=mlp_half(block, out.tokens))
        return self.select(mlp_half(block, x), cls_attention_scores(weights))


class TextAwarePatchDetector(Selector):
    """COPA's TPD (§3.2): a_i = sigmoid(F_theta(h_i)), h_i = MLP_2(concat(v_i, t_cls)).

    Three linear layers (GELU between): (D + D_text) -> hidden -> hidden -> 1. Acts on the
    block's output; the image [CLS] is excluded from scoring and kept first. With
    ``use_detector=False`` the selection is by image-[CLS] attention at the same place (a
    ``ClsAttentionSelector``), and the scores are still returned when ``text_cls`` is given so
    that the PTA loss trains the detector during the warm-up.
    """

    max_locations = 1

    def __init__(self, embed_dim: int, text_dim: int | None = None, hidden_dim: int | None = None,
                 keep_ratio: float = 0.5, rounding: str = "round", keep_order: bool = True,
                 fusion: str = "softmax"):
        super().__init__(keep_ratio, rounding, keep_order, fusion)
        text_dim = text_dim or embed_dim
        hidden_dim = hidden_dim or embed_dim
        # concat(v_i, t_cls) has D + D_text inputs, so unequal dims need no extra projection
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim + text_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, 1),  # F_theta
        )
        self.warmup = ClsAttentionSelector(embed_dim, keep_ratio, rounding, keep_order)

    def score(self, patches: Tensor, text_cls: Tensor) -> Tensor:
        """Alignment scores a (B, n) of patches (B, n, D) with text_cls (B, D_text).

        The first layer on v'_i = concat(v_i, t_cls) is computed as W_v v_i + (W_t t_cls + b):
        the same function, with the text half once per image instead of once per patch (a third
        of the detector's multiply-adds at D_text = D).
        """
        first = self.mlp[0]
        d = patches.shape[-1]
        text_part = F.linear(text_cls, first.weight[:, d:], first.bias)  # (B, hidden)
        hidden = F.linear(patches, first.weight[:, :d]) + text_part.unsqueeze(1)  # (B, n, hidden)
        return torch.sigmoid(self.mlp[1:](hidden)).squeeze(-1)  # (B, n)   a_i

    def select_text(self, x: Tensor, text_cls: Tensor, need_scores: bool = False) -> SelectorOutput:
        """Score the patches of a layer-k output x (B, 1+n, D) and select by the scores. With
        nothing to drop (keep_ratio 1: COPA's "w/o TPD") the detector runs only when its scores
        are wanted (PTA, probes), so at inference it costs nothing."""
        n = x.shape[1] - 1
        if not need_scores and num_keep(n, self.keep_ratio, self.rounding) >= n:
            return SelectorOutput(x, torch.arange(n, device=x.device).expand(x.shape[0], n), None)
        scores = self.score(x[:, 1:], text_cls)
        return self.select(x, scores)._replace(scores=scores)

    def select_by_attention(self, x: Tensor, attention: Tensor, text_cls: Tensor | None, need_scores: bool) -> SelectorOutput:
        """Warm-up / text-free: select by image-[CLS] ``attention`` (B, n); the TPD still scores
        the full layer-k patches x when its scores are wanted (PTA trains it in the warm-up)."""
        out = self.warmup.select(x, attention)
        return out._replace(scores=self.score(x[:, 1:], text_cls)) if need_scores and text_cls is not None else out

    def forward(self, block: nn.Module, x: Tensor, text_cls: Tensor | None = None,
                use_detector: bool = True, need_scores: bool = False, targets: Tensor | None = None) -> SelectorOutput:
        if not use_detector:
            x, weights, _ = attention_half(block, x)
            return self.select_by_attention(mlp_half(block, x), cls_attention_scores(weights), text_cls, need_scores)
        if text_cls is None:
            raise ValueError("the TPD needs text_cls; pass use_detector=False for text-free use")
        return self.select_text(block(x), text_cls, need_scores)


class TextAttentionSelector(Selector):
    """TRIPS's patch-selection layer (TRIPS §3.2, eq. 2-3): text-aware dynamic attention.

    Inside the selection block, after its self-attention: the text [CLS] projected by that
    block's own query projection attends to the patch keys of that attention (per head, scaled
    by 1/sqrt(head_dim), softmax over the n patches only, image [CLS] excluded, mean over
    heads); keep the top K by that attention and fuse the rest with the attention weights
    themselves (fusion "raw", not renormalised, TRIPS eq. 3); then the block's FFN runs on the
    reduced sequence. No new parameters: TRIPS assumes D_text == D; only when they differ a
    Linear(D_text, D) maps the text [CLS] first. Open choices fixed here: keys are the key
    projections of the block's attention (eq. 2 writes v^j[1:]), the text query gets no
    LayerNorm, and heads are averaged (EViT). Default rounding "ceil" (EViT).
    """

    inside_block = True

    def __init__(self, embed_dim: int, text_dim: int | None = None, keep_ratio: float = 0.7,
                 rounding: str = "ceil", keep_order: bool = True, fusion: str = "raw"):
        super().__init__(keep_ratio, rounding, keep_order, fusion)
        text_dim = text_dim or embed_dim
        self.text_proj = nn.Linear(text_dim, embed_dim) if text_dim != embed_dim else nn.Identity()
        self.fallback = ClsAttentionSelector(embed_dim, keep_ratio, rounding, keep_order, fusion,
                                             inside_block=True)

    def forward(self, block: nn.Module, x: Tensor, text_cls: Tensor | None = None,
                use_detector: bool = True, need_scores: bool = False, targets: Tensor | None = None) -> SelectorOutput:
        if not use_detector:
            return self.fallback(block, x)
        if text_cls is None:
            raise ValueError("text_attention needs text_cls; pass use_detector=False for "
                             "text-free use")
        x, _, k = attention_half(block, x)
        attn = block.attn
        d = attn.attn_dim
        # q_text = W_q t_cls + b_q: the query rows of the block's fused qkv projection
        w_q = attn.qkv.weight[:d]
        b_q = attn.qkv.bias[:d] if attn.qkv.bias is not None else None
        q = nn.functional.linear(self.text_proj(text_cls), w_q, b_q)  # (B, D)
        q = attn.q_norm(q.view(-1, attn.num_heads, 1, attn.head_dim))  # (B, h, 1, hd)
        logits = (q * attn.scale) @ k[:, :, 1:].transpose(-2, -1)  # (B, h, 1, n)
        scores = logits.softmax(dim=-1).mean(dim=1).squeeze(1)  # (B, n)   TRIPS eq. (2)
        out = self.select(x, scores)
        return out._replace(tokens=mlp_half(block, out.tokens))


class OracleSelector(Selector):
    """The patches the text refers to (``targets`` (B, n), e.g. rasterised referent boxes): the
    best any selector keeping K can do for them, so an upper reference for the others.

    K is ``num_keep`` as for every selector, so the cost at a keep ratio is theirs: the targets
    first, then the other patches, each group in raster order (top-left first); with more targets
    than K, the first K targets in raster order. The fused token is the mean of the dropped
    patches (fusion "uniform": there are no scores to weigh them by). Acts on the block's output, as
    the TPD. ``use_detector=False`` (warm-up, text-free uses: no text, so no targets) selects by
    image-[CLS] attention at the same place, as the TPD does. No parameters.
    """

    max_locations = 1

    def __init__(self, embed_dim: int, keep_ratio: float = 0.5, rounding: str = "round",
                 keep_order: bool = True, fusion: str = "uniform"):
        super().__init__(keep_ratio, rounding, keep_order, fusion)
        self.warmup = ClsAttentionSelector(embed_dim, keep_ratio, rounding, keep_order)

    def forward(self, block: nn.Module, x: Tensor, text_cls: Tensor | None = None,
                use_detector: bool = True, need_scores: bool = False, targets: Tensor | None = None) -> SelectorOutput:
        if not use_detector:
            return self.warmup(block, x)
        if targets is None:
            raise ValueError("the oracle selector needs targets (B, n), the patches each text refers to; "
                             "pass use_detector=False for text-free use")
        n = x.shape[1] - 1
        if targets.shape != (x.shape[0], n):
            raise ValueError(f"oracle targets must be (batch, patches) = {(x.shape[0], n)}, got {tuple(targets.shape)}")
        # score 1 for a target, 0 otherwise: the stable top-K takes the targets, then the rest, by index
        return self.select(block(x), targets.to(x.dtype))


class RandomSelector(Selector):
    """K patches drawn uniformly at random (K = ``num_keep``, the others' cost): the lower
    reference, whose expected target-patch recall is K / n.

    A fresh draw per example and call from torch's global generator (on the tokens' device), so
    a training run draws anew each step and repeats itself under the engine's seeding, and an
    evaluation is deterministic under ``torch.manual_seed``. The fused token is the mean of the
    dropped patches (fusion "uniform"). Acts on the block's output, as the TPD; reads neither the
    text nor ``use_detector`` (nothing to warm up). No parameters.
    """

    max_locations = 1

    def __init__(self, embed_dim: int, keep_ratio: float = 0.5, rounding: str = "round",
                 keep_order: bool = True, fusion: str = "uniform"):
        super().__init__(keep_ratio, rounding, keep_order, fusion)

    def forward(self, block: nn.Module, x: Tensor, text_cls: Tensor | None = None,
                use_detector: bool = True, need_scores: bool = False, targets: Tensor | None = None) -> SelectorOutput:
        x = block(x)
        return self.select(x, torch.rand(x.shape[0], x.shape[1] - 1, device=x.device))


#: Selectors by name. Every constructor takes ``embed_dim`` first, then keyword options.
SELECTORS: dict[str, type[nn.Module]] = {
    "none": NoSelection,
    "tpd": TextAwarePatchDetector,
    "cls_attention": ClsAttentionSelector,
    "text_attention": TextAttentionSelector,
    "oracle": OracleSelector,
    "random": RandomSelector,
}


def build_selector(name: str, embed_dim: int, **options) -> nn.Module:
    """The selector called ``name`` (a key of SELECTORS) for image width ``embed_dim``."""
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; choose from {sorted(SELECTORS)}")
    return SELECTORS[name](embed_dim, **options)
