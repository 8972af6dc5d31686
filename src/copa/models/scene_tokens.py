"""Perfect image tokens: the perception bracket (issue 23; ``finetune.vqa.perception: oracle``, grounding's too).

In place of the ViT, each patch's token is built from what the scene draws there (a grid of attribute
indices, copa.data.scene_grid): the sum of a fixed random vector per attribute value (one more per
attribute for "no object"), and one per patch position; the [CLS] token is its own vector plus the
patch tokens' mean; every token is LayerNorm-ed (no weights) to the scale of the ViT's output.
Nothing here is trained, so whatever the fine-tune learns is the text encoder's, the fusion's and the
decoder's: an upper bracket on what perfect perception gives them, and a fast one (no ViT to run).
The selection is skipped (every patch is kept), so the bracket sets the selector aside too.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CODE_SEED = 0  # the vectors are a fixed code, the same for every run (the positions' for each grid size)


class SceneTokens(nn.Module):
    def __init__(self, attribute_values: Sequence[int], dim: int) -> None:
        """``attribute_values``: the number of values of each attribute (without "no object")."""
        super().__init__()
        generator = torch.Generator().manual_seed(CODE_SEED)
        self.dim = dim
        for k, count in enumerate(attribute_values):
            self.register_buffer(f"attribute_{k}", torch.randn(count + 1, dim, generator=generator), persistent=False)
        self.register_buffer("cls", torch.randn(dim, generator=generator), persistent=False)
        self.attributes = len(attribute_values)

    def positions(self, n: int) -> Tensor:
        """(n, dim) one vector per patch of an n-patch grid (a stream of its own: n >= 1)."""
        return torch.randn(n, self.dim, generator=torch.Generator().manual_seed(CODE_SEED + n))

    def forward(self, grids: Tensor, text_cls: Tensor | None = None, use_detector: bool = True, prefix: Tensor | None = None,
                need_scores: bool = False, targets: Tensor | None = None) -> dict[str, Tensor]:
        """``grids`` (B, n, attributes) value indices -> {"tokens": (B, 1 + n, dim)}. The ViT's selection
        arguments (``text_cls``, ``use_detector``, ``targets``) are ignored: every patch is kept; there is
        no selector's score nor layer prefix to give."""
        if need_scores or prefix is not None:
            raise ValueError("perception oracle has no selector's scores and no ViT layers: need_scores and prefix are the ViT's")
        if grids.dim() != 3 or grids.shape[-1] != self.attributes:
            raise ValueError(f"scene grids must be (B, n, {self.attributes}) attribute indices, got {tuple(grids.shape)}")
        patches = self.positions(grids.shape[1]).to(self.cls.device).expand(grids.shape[0], -1, -1)
        for k in range(self.attributes):
            patches = patches + getattr(self, f"attribute_{k}")[grids[..., k]]
        tokens = torch.cat([(self.cls + patches.mean(1))[:, None], patches], dim=1)
        return {"tokens": F.layer_norm(tokens, (self.dim,))}
