"""Where a step's random draws are made. A step draws its masks, prefixes and negatives from one
CPU generator seeded by the batch (the same draws on any device); a CUDA tensor cannot draw from
a CPU generator, so the draws are made on the generator's device and moved to the tensors'."""

from __future__ import annotations

import torch


def draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """The generator's device, or ``device`` where the global RNG draws (``generator`` None)."""
    return device if generator is None else generator.device
