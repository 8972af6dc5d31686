"""The model whose costs are measured and its inputs, at the protocol's sizes (conventions:
``copa.eval.efficiency``): built fresh and seeded from a run's params, random inputs in the
project's WordPiece layout."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from copa.config import EfficiencyParams, Params
from copa.data.tokenizer import SPECIAL_TOKENS
from copa.train.architectures import architecture, resolve
from copa.train.build import require_encoder


def protocol_spec(params: Params, vocab_size: int, image_size: int, text_length: int) -> Any:
    """The run's model spec (its architecture's ``spec``) at another resolution, with room for
    ``text_length`` tokens."""
    spec = resolve(architecture(params).spec)(params, vocab_size)
    return dataclasses.replace(spec, image_size=image_size, max_text_length=max(spec.max_text_length, text_length))


def protocol_model(params: Params, vocab_size: int, settings: EfficiencyParams) -> tuple[nn.Module, Callable, dict]:
    """The model whose costs are measured (fresh, seeded, at the protocol's sizes), its forward
    (the architecture's ``cost_forward``) and its description for the record."""
    require_encoder(params, "the cost protocol")
    arch = architecture(params)
    spec = protocol_spec(params, vocab_size, settings.image_size, settings.text_length)
    torch.manual_seed(params.seed)
    model = resolve(arch.model)(spec)
    description = {"architecture": arch.name, "selection": spec.selection, "location": list(params.model.selection.location),
                   "keep_ratio": spec.keep_ratio, **resolve(arch.describe)(model)}
    return model, resolve(arch.cost_forward), description


def pair_inputs(batch: int, image_size: int, text_length: int, vocab_size: int, device: torch.device,
                seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Random images (B, 3, S, S), token ids (B, L) with [CLS] ... [SEP] in the project's WordPiece
    layout, and a full attention mask (B, L)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (batch, text_length), generator=g)
    ids[:, 0], ids[:, -1] = SPECIAL_TOKENS.index("[CLS]"), SPECIAL_TOKENS.index("[SEP]")
    return images.to(device), ids.to(device), torch.ones(batch, text_length, dtype=torch.long, device=device)


def pretraining_batch(pairs: int, objects: int, image_size: int, text_length: int, patch_size: int, vocab_size: int,
                      device: torch.device, seed: int = 0) -> dict:
    """A synthetic ``CopaPretraining`` batch: pairs {images, input_ids, attention_mask, image_ids
    (every pair its own image)}, objects {images, input_ids, attention_mask, patch_labels (B_O, n)
    in {0, 1}}, seed."""
    images, ids, mask = pair_inputs(pairs, image_size, text_length, vocab_size, device, seed)
    o_images, o_ids, o_mask = pair_inputs(objects, image_size, text_length, vocab_size, device, seed + 1)
    n = (image_size // patch_size) ** 2
    labels = (torch.rand(objects, n, generator=torch.Generator().manual_seed(seed + 2)) > 0.7).float()
    return {"pairs": {"images": images, "input_ids": ids, "attention_mask": mask, "image_ids": torch.arange(pairs, device=device)},
            "objects": {"images": o_images, "input_ids": o_ids, "attention_mask": o_mask, "patch_labels": labels.to(device)},
            "seed": seed}
