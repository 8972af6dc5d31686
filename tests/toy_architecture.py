"""A toy architecture for tests/test_architectures.py: a 2-layer MLP over mean-pooled pixels and
mean-pooled token embeddings, pretrained with an ITM-like loss (pair vs. its images rolled by one).
Everything an architecture of copa.train.architectures names, in one module; the test registers
``TOY`` once."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from copa.train.architectures import Architecture


@dataclass(frozen=True)
class ToySpec:
    vocab_size: int
    image_size: int
    max_text_length: int
    selection: str
    keep_ratio: float
    hidden: int = 16


def toy_spec(params, vocab_size: int) -> ToySpec:
    s = params.model.selection
    return ToySpec(vocab_size, params.patch_labels.image_size, params.model.max_text_length, s.method, s.keep_ratio)


class ToyModel(nn.Module):
    def __init__(self, spec: ToySpec):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden)
        self.mlp = nn.Sequential(nn.Linear(3 + spec.hidden, spec.hidden), nn.GELU(), nn.Linear(spec.hidden, 2))

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        text = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.mlp(torch.cat([images.mean(dim=(2, 3)), text], dim=-1))  # (B, 2) match logits


def toy_forward(model: ToyModel, images, input_ids, attention_mask, part=lambda name: nullcontext()) -> Tensor:
    with part("mlp"):
        return model(images, input_ids, attention_mask)


def describe_toy(model: ToyModel) -> dict:
    return {"hidden": model.spec.hidden, "parameters": {"all": sum(p.numel() for p in model.parameters())}}


class ToyPretraining(nn.Module):
    def __init__(self, model: ToyModel):
        super().__init__()
        self.model = model
        self.register_buffer("detector_on", torch.tensor(False))

    def forward(self, batch: dict) -> dict[str, Tensor]:
        pairs = batch["pairs"]
        images = pairs["images"]
        logits = torch.cat([self.model(images, pairs["input_ids"], pairs["attention_mask"]),
                            self.model(images.roll(1, 0), pairs["input_ids"], pairs["attention_mask"])])
        labels = torch.cat([torch.ones(len(images)), torch.zeros(len(images))]).long().to(logits.device)
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "itm": loss.detach()}

    def after_step(self, step: int) -> None:
        pass


def build_toy_pretraining(params, tokenizer) -> ToyPretraining:
    return ToyPretraining(ToyModel(toy_spec(params, len(tokenizer))))


def initialise_toy(step, params, pair_data, vocab_file, init_dir, box_data=None) -> None:
    return None  # starts from its seeded initialisation


TOY = Architecture(
    name="toy", run_prefix="toy-", params_section=None,
    spec=f"{__name__}:toy_spec", model=f"{__name__}:ToyModel", cost_forward=f"{__name__}:toy_forward",
    cost_forward_text="a 2-layer MLP over pooled pixels and token embeddings", describe=f"{__name__}:describe_toy",
    build_pretraining=f"{__name__}:build_toy_pretraining", initialise=f"{__name__}:initialise_toy",
    objectives=("itm",), selection_methods=("none",),
)
