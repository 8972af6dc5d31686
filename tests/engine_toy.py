"""A tiny engine task for tests: MLP regression on a seeded synthetic dataset.

Imported by tests/test_engine.py and run as a script (alone or under torchrun) by its
subprocess tests: ``python tests/engine_toy.py OUT_DIR [--epochs ...]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from copa.train.engine import EngineConfig, seed_everything, train


class ToyModel(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        # dropout draws from the global torch RNG, so exact resume needs the RNG restored
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        # a momentum copy of the first weight, updated in after_step (like COPA's momentum encoder)
        self.register_buffer("ema", self.net[0].weight.detach().clone())

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        pred = self.net(batch["x"]).squeeze(-1)  # (B,)
        err = pred - batch["y"]
        return {"loss": err.pow(2).mean(), "mae": err.abs().mean().detach()}


class ToyTask:
    def __init__(self, seed: int = 0, n: int = 40, global_batch: int = 8, dim: int = 4,
                 hidden: int = 16, dropout: float = 0.1, lr: float = 0.05) -> None:
        self.seed, self.global_batch, self.lr = seed, global_batch, lr
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        self.y = torch.sin(self.x.sum(-1)) + 0.1 * torch.randn(n, generator=g)
        seed_everything(seed)  # same initial weights in every process
        self.model = ToyModel(dim, hidden, dropout)

    def param_groups(self) -> list[dict]:
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        return [{"name": "decay", "params": decay, "lr": self.lr, "weight_decay": 0.01},
                {"name": "no_decay", "params": no_decay, "lr": self.lr, "weight_decay": 0.0}]

    def steps_per_epoch(self, world_size: int) -> int:
        return len(self.x) // self.global_batch

    def batches(self, epoch: int, rank: int, world_size: int, start: int) -> Iterator[dict[str, Tensor]]:
        # the order depends on (seed, epoch) only; each rank takes its contiguous share of
        # every global batch, so the union over ranks is the single-process batch
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))
        for b in range(start, self.steps_per_epoch(world_size)):
            idx = order[b * self.global_batch:(b + 1) * self.global_batch].chunk(world_size)[rank]
            yield {"x": self.x[idx], "y": self.y[idx]}

    def after_step(self, model: nn.Module, step: int) -> None:
        with torch.no_grad():
            model.ema.lerp_(model.net[0].weight, 0.1)


def engine_config(epochs: int = 2, checkpoint_every: int = 3, seed: int = 0) -> EngineConfig:
    return EngineConfig(epochs=epochs, lr_lambda=lambda step: 1.0 / (1 + 0.1 * step), grad_clip=1.0,
                        checkpoint_every=checkpoint_every, log_every=1, seed=seed, device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--checkpoint-every", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--samples", type=int, default=40)
    args = ap.parse_args()
    task = ToyTask(dropout=args.dropout, n=args.samples)
    params = {"toy": {"dropout": args.dropout, "n": args.samples}}
    train(task, engine_config(args.epochs, args.checkpoint_every), args.out, params)


if __name__ == "__main__":
    main()
