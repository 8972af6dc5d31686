"""Transformer decoder for sequence-to-sequence objectives (COPA section 3.1 and Appendix B).

mPLUG's and COPA's decoder is a 12-layer BERT-style transformer: causal self-attention ->
cross-attention to the fused ``concat[image, text]`` states -> FFN per layer, then a BERT LM head.
It serves PrefixLM, captioning, VQA answer generation and grounding coordinates.

The module keeps no state between calls (no key/value cache): ``forward`` re-reads the whole
prefix, so a decoding loop can call it step by step on growing ``input_ids``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import (
    BertEmbeddings,
    BertLayer,
    BertPredictionHeadTransform,
)

from copa.models.text import BERT_DROPOUT, BERT_INIT_STD, additive_mask, bert_config, bert_init


class LMHead(nn.Module):
    """BERT's LM head: dense -> activation -> LayerNorm -> vocabulary projection.

    Our own rather than ``BertLMPredictionHead``, which in transformers 5.23 also registers a
    ``bias`` parameter that its forward never uses (no gradient, trips DDP).
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))


def causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) padding mask -> (B, 1, L, L) additive mask: query t sees keys s <= t that are tokens.

    Built as one boolean then converted once, so a row with nothing to attend to (left padding)
    is uniform rather than -inf / NaN.
    """
    length = attention_mask.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = lower[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, L, L)
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


class Decoder(nn.Module):
    """``forward(input_ids (B, L), attention_mask (B, L), encoder_states (B, S, H),
    encoder_mask (B, S)) -> logits (B, L, vocab_size)``.

    ``encoder_states`` is the fused ``concat[image_out, text_out]`` of ``SkipConnectedFusion`` (its
    width must be ``hidden_size``). With ``tie_word_embeddings`` the output projection shares its
    weight with the decoder's own input word embeddings (BERT's tying).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        intermediate_size: int = 3072,
        max_position_embeddings: int = 512,
        dropout: float = BERT_DROPOUT,
        pad_token_id: int = 0,
        tie_word_embeddings: bool = True,
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
            is_decoder=True,  # gives each BertLayer its cross-attention block
            attn_implementation=attn_implementation,
        )
        self.embeddings = BertEmbeddings(self.config)
        self.layer = nn.ModuleList(BertLayer(self.config, layer_idx=i) for i in range(num_layers))
        self.head = LMHead(self.config)
        if tie_word_embeddings:
            self.head.decoder.weight = self.embeddings.word_embeddings.weight
        self.apply(bert_init(init_std))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_states: torch.Tensor,
        encoder_mask: torch.Tensor,
    ) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids)  # (B, L, H)
        self_mask = causal_mask(attention_mask, hidden.dtype)  # (B, 1, L, L)
        cross_mask = additive_mask(encoder_mask, hidden.dtype)  # (B, 1, 1, S)
        for layer in self.layer:
            # The mask is always explicit, so the backends' implicit is_causal never applies.
            hidden = layer(
                hidden,
                attention_mask=self_mask,
                encoder_hidden_states=encoder_states,
                encoder_attention_mask=cross_mask,
            )
        return self.head(hidden)  # (B, L, V)
