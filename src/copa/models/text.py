"""Text encoder (COPA section 3.1: BERT-base layers 1-6).

Every transformer block here is a `transformers` ``BertLayer`` (or its submodules), so parameter
names match a ``BertModel`` state dict and loading a BERT checkpoint is a thin key mapping
(``copa.models.bert_init``). Masks are built here, once, as additive float masks, and passed to the
layers explicitly: we never rely on ``BertModel``'s mask helpers or on the attention backends'
implicit ``is_causal``, whose behaviour changed across transformers versions.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

BERT_INIT_STD = 0.02  # BertConfig.initializer_range, BERT's at every width (params: model.init_std)
BERT_DROPOUT = 0.1  # BertConfig's hidden_dropout_prob and attention_probs_dropout_prob (params: model.dropout)


def bert_config(
    *,
    vocab_size: int = 1,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position_embeddings: int = 512,
    dropout: float = BERT_DROPOUT,
    pad_token_id: int = 0,
    is_decoder: bool = False,
    attn_implementation: str = "sdpa",
) -> BertConfig:
    """One place that turns our constructor args into a ``BertConfig`` for text, fusion and decoder.

    ``vocab_size`` only sizes embeddings, so the fusion network (which has none) leaves it at 1.
    BERT-base is ``hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072``.
    ``attn_implementation`` must be set: a ``BertLayer`` built outside a ``PreTrainedModel``
    otherwise has ``None`` and transformers falls back to eager with a warning.
    ``is_decoder`` turns on the cross-attention block of ``BertLayer`` (transformers 5.23 only
    builds it for decoders).
    """
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=pad_token_id,
        is_decoder=is_decoder,
        add_cross_attention=is_decoder,
        attn_implementation=attn_implementation,
    )


def additive_mask(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, K) 1 = attend / 0 = padding -> (B, 1, 1, K) additive mask (0 or dtype min)."""
    return (1.0 - key_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


class TextEncoder(nn.Module):
    """BERT embeddings + ``num_layers`` bidirectional ``BertLayer`` s (COPA: BERT-base layers 1-6).

    ``forward(input_ids (B, L), attention_mask (B, L)) -> (B, L, H)``; the text [CLS] feature
    t_cls that ITC and the TPD use is ``out[:, 0]``.
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        hidden_size: int = 768,
        num_layers: int = 6,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        max_position_embeddings: int = 512,
        dropout: float = BERT_DROPOUT,
        pad_token_id: int = 0,
        attn_implementation: str = "sdpa",
        init_std: float = BERT_INIT_STD,
    ) -> None:
        super().__init__()
        self.config = bert_config(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            dropout=dropout,
            pad_token_id=pad_token_id,
            attn_implementation=attn_implementation,
        )
        # Names mirror BertModel ("embeddings.*", "encoder.layer.{i}.*" -> "layer.{i}.*").
        self.embeddings = BertEmbeddings(self.config)
        self.layer = nn.ModuleList(BertLayer(self.config, layer_idx=i) for i in range(num_layers))
        self.apply(bert_init(init_std))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids)  # (B, L, H)
        mask = additive_mask(attention_mask, hidden.dtype)  # (B, 1, 1, L)
        for layer in self.layer:
            hidden = layer(hidden, attention_mask=mask)
        return hidden


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation (``BertPreTrainedModel._init_weights``, initializer_range ``std``), for
    modules built from BERT's parts without BertModel, which is what applies it: PyTorch's defaults
    (embeddings ~ N(0, 1)) give a from-scratch decoder logits of std ~14. Applied through ``bert_init``."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def bert_init(std: float) -> Callable[[nn.Module], None]:
    """``init_bert_weights`` at ``std``, for ``Module.apply``."""
    return functools.partial(init_bert_weights, std=std)
