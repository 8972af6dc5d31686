"""Optimiser parameter groups and the warm-up + cosine learning-rate schedule.

COPA Appendix D / digest "Hyper-parameters": AdamW, weight decay 0.02; the learning rate warms
up over 1000 iterations to 1e-5 for the ViT and 1e-4 for the BERT-initialised parts (text
encoder, fusion, decoder), then decays with a cosine to 1e-6. Fine-tuning uses other values
(Table 11) through the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def is_no_decay(name: str, param: Tensor, no_decay_names: Sequence[str] = ()) -> bool:
    """No weight decay on biases, norm weights and other 0-d/1-d parameters (the temperature).

    The rule is nanoGPT's and timm's ``param_groups_weight_decay``: decay only tensors of
    dim >= 2 (matmul and conv weights), plus any name ending in one of ``no_decay_names``
    (e.g. timm's ``pos_embed``, ``cls_token``). COPA/ALBEF do not state it.
    """
    return param.dim() < 2 or name.endswith(".bias") or any(name.endswith(s) for s in no_decay_names)


VISION_PREFIX = "model.vision."  # the ViT (and its selector) in the pretraining and fine-tuning modules
SELECTOR_PREFIX = "model.vision.selector."  # the selector's own parameters (the TPD's MLP, TRIPS's text projection)
# timm's VisionTransformer.no_weight_decay(), which ALBEF / mPLUG's optimiser factory honours: decayed,
# the position embeddings shrink toward zero while the patch embeddings grow
VIT_NO_DECAY = ("pos_embed", "cls_token")


def param_groups(
    named_parameters: Iterable[tuple[str, Tensor]],
    vision_prefixes: Sequence[str],
    lr_vision: float,
    lr_text: float,
    weight_decay: float,
    no_decay_names: Sequence[str] = (),
    other_prefixes: Sequence[str] = (),
) -> list[dict]:
    """AdamW groups: (vision | other) x (decay | no decay); frozen parameters left out.

    A parameter is "vision" when its name starts with one of ``vision_prefixes`` (the ViT, at
    ``lr_vision``) and with none of ``other_prefixes``; everything else (BERT-initialised text
    encoder, fusion, decoder, heads, temperature) gets ``lr_text``. Empty groups are dropped.
    Each group has a ``name`` key for logging.
    """
    prefixes, others = tuple(vision_prefixes), tuple(other_prefixes)
    groups: dict[tuple[bool, bool], list[Tensor]] = {}
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        key = (name.startswith(prefixes) and not name.startswith(others), is_no_decay(name, p, no_decay_names))
        groups.setdefault(key, []).append(p)
    out = []
    for vision in (True, False):
        for no_decay in (False, True):
            params = groups.get((vision, no_decay))
            if params:
                out.append({
                    "name": f"{'vision' if vision else 'text'}_{'no_decay' if no_decay else 'decay'}",
                    "params": params,
                    "lr": lr_vision if vision else lr_text,
                    "weight_decay": 0.0 if no_decay else weight_decay,
                })
    return out


def model_param_groups(model: nn.Module, selector_lr: str, lr_vision: float, lr_text: float, weight_decay: float) -> list[dict]:
    """:func:`param_groups` of a pretraining or fine-tuning module: the ViT at ``lr_vision``, its
    selector at the rate ``selector_lr`` names (``model.selection.lr``: ``text`` puts it with
    ``lr_text``, ``vision`` with the ViT), everything else at ``lr_text``; no weight decay on the
    ViT's position embeddings and [CLS] token (``VIT_NO_DECAY``) nor on biases and norms."""
    if selector_lr not in ("text", "vision"):
        raise ValueError(f"selector_lr must be 'text' or 'vision', got {selector_lr!r}")
    others = (SELECTOR_PREFIX,) if selector_lr == "text" else ()
    return param_groups(model.named_parameters(), (VISION_PREFIX,), lr_vision, lr_text, weight_decay, VIT_NO_DECAY, others)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, base_lr: float, min_lr: float) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine decay to ``min_lr``."""
    # 1) linear warm-up over warmup_steps steps (nanoGPT's (it + 1) / (warmup + 1): never 0)
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    # 2) after total_steps, stay at the minimum
    if step >= total_steps:
        return min_lr
    # 3) in between, cosine from base_lr (at step == warmup_steps) down to min_lr
    decay_ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return min_lr + coeff * (base_lr - min_lr)


def warmup_cosine_lambda(
    base_lr: float, warmup_steps: int, total_steps: int, min_lr: float
) -> Callable[[int], float]:
    """``warmup_cosine`` as a LambdaLR factor (lr / base_lr) for a group whose lr is ``base_lr``.

    ``min_lr`` is absolute (1e-6 in COPA for both 1e-5 and 1e-4 groups); a group whose base
    lr is below it (e.g. fine-tuning at 8e-7) stays at its base lr after warm-up.
    """
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"steps must be >= 0, got warmup={warmup_steps}, total={total_steps}")
    if base_lr <= 0:
        return lambda step: 1.0
    floor = min(min_lr, base_lr)
    return lambda step: warmup_cosine(step, warmup_steps, total_steps, base_lr, floor) / base_lr


def warmup_cosine_scheduler(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr: float) -> LambdaLR:
    """LambdaLR with one :func:`warmup_cosine_lambda` per parameter group (its own base lr).

    Call ``scheduler.step()`` once per optimiser step; ``last_epoch`` counts steps.
    """
    lambdas = [
        warmup_cosine_lambda(g.get("initial_lr", g["lr"]), warmup_steps, total_steps, min_lr)
        for g in optimizer.param_groups
    ]
    return LambdaLR(optimizer, lr_lambda=lambdas)
