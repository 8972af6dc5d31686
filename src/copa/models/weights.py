"""Reading weights and checkpoints from local files (timm ViT, BERT, the runs' own): the one place
that opens them, with torch's safe loader (tensors and plain containers only: no pickled code runs)."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from copa.config import UserError


WEIGHTS_ONLY_REFUSAL = "WeightsUnpickler error:"  # where torch's message says what it refused


class UnreadableWeights(UserError, ValueError):
    """A weights or checkpoint file the safe loader refuses: truncated, not a torch file, or pickled code."""


def load_tensors(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; a file it cannot or will not read raises
    :class:`UnreadableWeights`, one line naming the file (a missing one: FileNotFoundError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # torch's note on a foreign pickle protocol: the refusal below says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError) as exc:  # a cut zip: OSError
        text = str(exc)
        refused = WEIGHTS_ONLY_REFUSAL in text  # torch's message first advises weights_only=False: never here
        detail = text.split(WEIGHTS_ONLY_REFUSAL, 1)[1] if refused else text
        reason = next((line.strip() for line in detail.splitlines() if line.strip()), type(exc).__name__)[:200]
        raise UnreadableWeights(f"{path}: not a readable checkpoint ({'the safe loader refuses it: ' if refused else ''}{reason}); "
                                "delete it, or the run folder, to start again") from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save``'d file (tensors only: no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(path)
    state = load_tensors(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), found {type(state).__name__}")
    return state
