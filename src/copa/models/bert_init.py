"""BERT checkpoints -> COPA's text modules (COPA section 4.1, mPLUG's initialisation).

A BERT state dict (bare ``BertModel`` or nested under ``bert.``) fills the text encoder (layers
1..T), the fusion network's text branch (the next F layers) and the decoder; every block keeps
BERT's parameter names, so each load is a key mapping. A module of its own because one load
fills the text encoder and the fusion network together, and fusion.py builds on text.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from copa.models.decoder import Decoder
from copa.models.fusion import SkipConnectedFusion
from copa.models.text import TextEncoder


# Non-persistent buffers of BertEmbeddings that older BERT checkpoints still carry.
BERT_BUFFER_KEYS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})


def bert_model_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a bare ``BertModel`` state dict or one nested under ``bert.`` (BertForPreTraining,
    BertForMaskedLM: the layout of the published bert-base checkpoints)."""
    if any(key.startswith("bert.") for key in state_dict):
        return {k.removeprefix("bert."): v for k, v in state_dict.items() if k.startswith("bert.")}
    return dict(state_dict)


def load_bert_weights(
    text_encoder: TextEncoder,
    fusion: SkipConnectedFusion,
    state_dict: Mapping[str, torch.Tensor],
) -> list[str]:
    """Initialise the text encoder and the fusion text branch from a BERT checkpoint.

    COPA section 4.1: "The text encoder is initialized using the first 6 layers of the BERT_base
    model and the skip-connected network is initialized using the last 6 layers". With
    ``T = len(text_encoder.layer)`` and ``F = len(fusion.layers)``, BERT layers ``0..T-1`` go to the
    text encoder (with the embeddings) and layers ``T..T+F-1`` to the fusion layers' self-attention
    and FFN; the checkpoint must have exactly ``T + F`` layers. The pooler is dropped.

    Returns the fusion parameter names that BERT has no weights for (the text-to-image
    cross-attention and the image projection), which keep their fresh initialisation.
    """
    source = bert_model_keys(state_dict)
    layer_ids = {int(k.split(".")[2]) for k in source if k.startswith("encoder.layer.")}
    n_text, n_fusion = len(text_encoder.layer), len(fusion.layers)
    if layer_ids != set(range(n_text + n_fusion)):
        raise ValueError(
            f"BERT checkpoint has encoder layers {sorted(layer_ids)}; text encoder ({n_text}) + "
            f"fusion ({n_fusion}) need exactly layers 0..{n_text + n_fusion - 1}"
        )

    text_sd: dict[str, torch.Tensor] = {}
    fusion_sd: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        if key in BERT_BUFFER_KEYS:
            continue
        if key.startswith("embeddings."):
            text_sd[key] = value
        elif key.startswith("encoder.layer."):
            _, _, idx, rest = key.split(".", 3)
            i = int(idx)
            if i < n_text:
                text_sd[f"layer.{i}.{rest}"] = value
            else:
                fusion_sd[f"layers.{i - n_text}.{rest}"] = value
    # strict: every text-encoder parameter must come from the checkpoint, and nothing may be left.
    text_encoder.load_state_dict(text_sd, strict=True)
    result = fusion.load_state_dict(fusion_sd, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"BERT keys with no place in the fusion network: {result.unexpected_keys}")
    return list(result.missing_keys)


def load_bert_decoder_weights(decoder: Decoder, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """mPLUG's decoder initialisation from a BERT checkpoint (its decoder is a BertLMHeadModel loaded
    from bert-base): the embeddings, layer i's self-attention and FFN into decoder layer i for the
    first ``len(decoder.layer)`` layers (as ``from_pretrained`` fills a smaller config), and the MLM
    head's transform and bias (``cls.predictions``) into the LM head where the checkpoint has them.
    Returns the decoder parameters BERT has no weights for (the cross-attention to the fused states,
    decoder layers beyond the checkpoint's), which keep their fresh initialisation."""
    target: dict[str, torch.Tensor] = {}
    for key, value in bert_model_keys(state_dict).items():
        if key.startswith("embeddings.") and key not in BERT_BUFFER_KEYS:
            target[key] = value
        elif key.startswith("encoder.layer.") and int(key.split(".")[2]) < len(decoder.layer):
            target[key.removeprefix("encoder.")] = value
    for key, value in state_dict.items():
        if key.startswith("cls.predictions.transform."):
            target["head." + key.removeprefix("cls.predictions.")] = value
        elif key == "cls.predictions.bias":
            target["head.decoder.bias"] = value
    result = decoder.load_state_dict(target, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"BERT keys with no place in the decoder: {result.unexpected_keys}")
    tied = decoder.head.decoder.weight is decoder.embeddings.word_embeddings.weight  # loaded with the embeddings
    return [k for k in result.missing_keys if not (tied and k == "head.decoder.weight")]
