"""mPLUG's cross-modal skip-connected fusion network (COPA section 3.1; BERT-base layers 7-12).

mPLUG (Li et al. 2022, ``FusionEncoder`` / ``FusionLayer`` in its public ``modeling_mplug.py``)
stacks ``num_layers`` layers; layer ``n`` is

* an *asymmetric co-attention* layer (text self-attention -> text-to-image cross-attention -> FFN;
  the image tokens pass through unchanged), unless
* ``n > 0 and n % stride == 0``: a *connected-attention* layer, one self-attention over
  ``concat[image, text]`` and the same FFN on both; the image part of the output is added to the
  image input (the cross-modal skip-connection), the text part replaces the text.

``stride`` is 3 for pretraining, VQA and captioning (6 layers: one connected layer, n = 3) and 6
(>= num_layers: pure co-attention) for retrieval.

Every block is built from ``transformers`` BERT submodules under BERT's names (``attention``,
``intermediate``, ``output``) so ``bert_init.load_bert_weights`` can copy BERT layers 7-12 in; the
``crossattention`` blocks (mPLUG's name) have no BERT counterpart and start fresh.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertOutput

from copa.models.text import BERT_DROPOUT, BERT_INIT_STD, additive_mask, bert_config, bert_init


def is_connected_layer(n: int, stride: int) -> bool:
    """mPLUG's rule (``FusionLayer.forward``): layer n > 0 with n % stride == 0 is connected."""
    return n > 0 and n % stride == 0


class CoAttentionLayer(nn.Module):
    """Asymmetric co-attention: only the text attends (to itself, then to the image)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.crossattention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        image: torch.Tensor,  # (B, Li, H)
        image_mask: torch.Tensor,  # (B, 1, 1, Li) additive
        text: torch.Tensor,  # (B, Lt, H)
        text_mask: torch.Tensor,  # (B, 1, 1, Lt) additive
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text, _ = self.attention(text, attention_mask=text_mask)
        text, _ = self.crossattention(
            text, encoder_hidden_states=image, encoder_attention_mask=image_mask
        )
        text = self.output(self.intermediate(text), text)
        return image, text


class ConnectedAttentionLayer(nn.Module):
    """Connected attention: one self-attention and FFN over concat[image, text]; image skip."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        image: torch.Tensor,
        image_mask: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        joint = torch.cat([image, text], dim=1)  # (B, Li + Lt, H), image first as in mPLUG
        joint_mask = torch.cat([image_mask, text_mask], dim=-1)  # (B, 1, 1, Li + Lt)
        joint, _ = self.attention(joint, attention_mask=joint_mask)
        joint = self.output(self.intermediate(joint), joint)
        new_image, text = joint.split([image.shape[1], text.shape[1]], dim=1)
        # mPLUG FusionEncoder: encoder_hidden_states += encoder_hidden_states_new (the skip)
        return image + new_image, text


class SkipConnectedFusion(nn.Module):
    """``forward(image_tokens (B, Li, Dv), image_mask (B, Li), text_states (B, Lt, H),
    text_mask (B, Lt)) -> (image_out (B, Li, H), text_out (B, Lt, H))``; masks are 1 = token,
    0 = padding.

    When ``image_dim != hidden_size`` (e.g. ViT-L 1024 with a BERT-base 768 text side) the image
    tokens are first mapped to the text width by Linear + LayerNorm, mPLUG's ``visn_fc`` /
    ``visn_layer_norm`` for its "large" models: the connected layers concatenate image and text
    tokens, so they need one width. With equal widths this is the identity, as in mPLUG.

    Cross-attention exists only in co-attention layers, so no parameter goes unused (DDP-safe).
    A checkpoint trained with stride 3 therefore has no ``layers.3.crossattention`` for a stride-6
    (retrieval) model: those weights start fresh, as in mPLUG, whose stride-3 pretraining never
    trains them either.
    """

    def __init__(
        self,
        *,
        image_dim: int,
        hidden_size: int = 768,
        num_layers: int = 6,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        stride: int = 3,
        dropout: float = BERT_DROPOUT,
        attn_implementation: str = "sdpa",
        init_std: float = BERT_INIT_STD,
    ) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"fusion stride must be >= 1, got {stride}")
        self.stride = stride
        config = bert_config(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_size=intermediate_size,
            dropout=dropout,
            attn_implementation=attn_implementation,
        )
        self.image_proj: nn.Module = (
            nn.Identity()
            if image_dim == hidden_size
            else nn.Sequential(
                nn.Linear(image_dim, hidden_size),
                nn.LayerNorm(hidden_size, eps=config.layer_norm_eps),
            )
        )
        self.layers = nn.ModuleList(
            ConnectedAttentionLayer(config)
            if is_connected_layer(n, stride)
            else CoAttentionLayer(config)
            for n in range(num_layers)
        )
        self.apply(bert_init(init_std))

    def forward(
        self,
        image_tokens: torch.Tensor,
        image_mask: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.image_proj(image_tokens)  # (B, Li, H)
        image_add = additive_mask(image_mask, image.dtype)  # (B, 1, 1, Li)
        text_add = additive_mask(text_mask, text_states.dtype)  # (B, 1, 1, Lt)
        text = text_states
        for layer in self.layers:
            image, text = layer(image, image_add, text, text_add)
        return image, text
