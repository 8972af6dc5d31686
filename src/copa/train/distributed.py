"""Process-group helpers: DDP when launched by ``torchrun``, a single process otherwise.

There is no launcher here: ``torchrun`` (``python -m torch.distributed.run``) starts the
processes and sets RANK / WORLD_SIZE / LOCAL_RANK; these helpers only read that environment.
Every collective is a no-op in a single process, so callers need no branches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when setup() created the process group (so teardown destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"`` / ``"cuda"`` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


def setup(device: str) -> DistContext:
    """Join the process group if torchrun launched us (NCCL on GPU, gloo on CPU)."""
    dev = resolve_device(device)
    if not all(k in os.environ for k in TORCHRUN_ENV):
        return DistContext(rank=0, world_size=1, local_rank=0, device=dev, owns_group=False)
    local_rank = int(os.environ["LOCAL_RANK"])
    if dev.type == "cuda":
        # one GPU per process, chosen by LOCAL_RANK (torchrun's convention)
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    owns_group = not dist.is_initialized()
    if owns_group:
        if dev.type == "cuda":
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if ctx.world_size == 1:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """Average scalar metrics over ranks (every rank must pass the same keys, in any order)."""
    if ctx.world_size == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return {k: v / ctx.world_size for k, v in zip(keys, t.tolist())}
