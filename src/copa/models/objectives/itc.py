"""ITC (ALBEF §3.2, COPA Appendix B): the momentum-feature queue, the DDP gather, the learnable
temperature, the momentum encoders and the contrastive losses.

The queue accepts any batch size (an upstream lesson, DESIGN.md: no ``queue_size % batch_size == 0``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    """Ring buffer of momentum image and text features (and optionally sample ids).

    ALBEF keeps ``image_queue``/``text_queue`` of shape (D, Q) filled with random features at
    start and asserts ``queue_size % batch_size == 0``. Here rows are features, (Q, D); the
    queue starts empty and keeps a fill count, so :meth:`contents` never returns rows that were
    not written, and :meth:`enqueue` takes any batch size: a batch that runs past the end
    wraps around, and a batch larger than the queue keeps its last ``size`` rows. All state
    (features, ids, pointer, count) is in buffers, so it moves with ``.to()`` and is saved in
    the state dict (a resumed run resumes its queue).

    DDP: every rank must enqueue the same global batch, so pass features through
    :func:`gather_features` first, as ALBEF's ``concat_all_gather``:
    ``queue.enqueue(gather_features(image_feat_m), gather_features(text_feat_m))``. The queues
    then stay identical across ranks. The in-batch part of the ITC loss stays local (ALBEF).
    """

    def __init__(self, dim: int, size: int, with_ids: bool = False) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"FeatureQueue needs dim >= 1 and size >= 1, got dim={dim}, size={size}")
        self.dim, self.size = dim, size
        self.register_buffer("image", torch.zeros(size, dim))  # (Q, D)
        self.register_buffer("text", torch.zeros(size, dim))  # (Q, D)
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long) if with_ids else None)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # valid rows

    @property
    def has_ids(self) -> bool:
        return self.ids is not None

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, image_feats: Tensor, text_feats: Tensor, ids: Tensor | None = None) -> None:
        """Append (n, D) image and text features (and (n,) ids); any n >= 0."""
        n = image_feats.shape[0]
        if image_feats.shape != (n, self.dim) or text_feats.shape != (n, self.dim):
            raise ValueError(
                f"enqueue expects image and text features of shape (n, {self.dim}), got "
                f"{tuple(image_feats.shape)} and {tuple(text_feats.shape)}"
            )
        if self.has_ids and (ids is None or ids.shape != (n,)):
            got = None if ids is None else tuple(ids.shape)
            raise ValueError(f"this queue stores ids: enqueue needs ids of shape ({n},), got {got}")
        if n == 0:
            return
        keep = min(n, self.size)  # a batch larger than the queue: only its last `size` rows
        ptr = int(self.ptr)
        rows = (ptr + torch.arange(keep, device=self.image.device)) % self.size  # wraps around
        self.image.index_copy_(0, rows, image_feats[-keep:].detach().to(self.image))
        self.text.index_copy_(0, rows, text_feats[-keep:].detach().to(self.text))
        if self.has_ids:
            self.ids.index_copy_(0, rows, ids[-keep:].to(self.ids))
        self.ptr.fill_((ptr + keep) % self.size)
        self.count.fill_(min(int(self.count) + keep, self.size))

    def contents(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """The valid rows, oldest first: image (n, D), text (n, D), ids (n,) or None."""
        count, ptr = int(self.count), int(self.ptr)
        if count < self.size:  # not yet wrapped: rows 0..count-1 in write order
            order = torch.arange(count, device=self.image.device)
        else:  # full: the oldest row is the one the pointer overwrites next
            order = (ptr + torch.arange(self.size, device=self.image.device)) % self.size
        ids = self.ids[order] if self.has_ids else None
        return self.image[order], self.text[order], ids


@torch.no_grad()
def gather_features(t: Tensor) -> Tensor:
    """All-gather ``t`` (n_rank, ...) over ranks along dim 0, rank-major; no gradient.

    A no-op when torch.distributed is not initialised. Ranks may hold different n (a last,
    smaller batch): sizes are gathered first and the rows padded, then trimmed. For the queue
    only (ALBEF ``concat_all_gather``); the result carries no gradient.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return t
    world = dist.get_world_size()
    t = t.detach().contiguous()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s) for s in sizes]
    padded = torch.cat([t, t.new_zeros((max(counts) - t.shape[0], *t.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class Temperature(nn.Module):
    """Learnable ITC temperature, clamped to [min, max] on every call (ALBEF: 0.07, [0.001, 0.5]).

    ALBEF clamps the parameter in place under ``no_grad`` before each use; so does ``forward``,
    which returns the parameter itself (0-d) so the loss keeps its gradient.
    """

    def __init__(self, init: float = 0.07, min_value: float = 0.001, max_value: float = 0.5) -> None:
        super().__init__()
        if not 0 < min_value <= init <= max_value:
            raise ValueError(
                f"Temperature needs 0 < min <= init <= max, got {min_value}, {init}, {max_value}"
            )
        self.min, self.max = min_value, max_value
        self.temp = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> Tensor:
        with torch.no_grad():
            self.temp.clamp_(self.min, self.max)
        return self.temp


def _params(x: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    return list(x.parameters()) if isinstance(x, nn.Module) else list(x)


@torch.no_grad()
def copy_to_momentum(model: nn.Module | Iterable[Tensor], model_m: nn.Module | Iterable[Tensor]) -> None:
    """Initialise the momentum copy from the model and freeze it (ALBEF ``copy_params``)."""
    for p, p_m in _paired(model, model_m):
        p_m.copy_(p)
        p_m.requires_grad_(False)


@torch.no_grad()
def momentum_update(
    model: nn.Module | Iterable[Tensor], model_m: nn.Module | Iterable[Tensor], m: float = 0.995
) -> None:
    """p_m <- m * p_m + (1 - m) * p over paired parameters (ALBEF ``_momentum_update``, m=0.995).

    Takes two modules or two parameter lists in the same order (ALBEF's ``model_pairs``:
    pass ``chain(vit.parameters(), proj.parameters())`` and the momentum twins).
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {m}")
    for p, p_m in _paired(model, model_m):
        p_m.lerp_(p.detach(), 1.0 - m)  # p_m + (1-m)(p - p_m)


def _paired(a: nn.Module | Iterable[Tensor], b: nn.Module | Iterable[Tensor]) -> list[tuple[Tensor, Tensor]]:
    pa, pb = _params(a), _params(b)
    if len(pa) != len(pb):
        raise ValueError(f"model and momentum model differ: {len(pa)} vs {len(pb)} parameters")
    for i, (p, q) in enumerate(zip(pa, pb)):
        if p.shape != q.shape:
            raise ValueError(f"parameter {i}: shape {tuple(p.shape)} vs momentum {tuple(q.shape)}")
    return list(zip(pa, pb))


class ItcOutput(NamedTuple):
    loss: Tensor  # () mean of the image->text and text->image losses
    sim_i2t: Tensor  # (B, B+Q) image vs [batch momentum texts; queue texts] / temperature
    sim_t2i: Tensor  # (B, B+Q) text vs [batch momentum images; queue images] / temperature


def itc_loss(
    image_feat: Tensor,
    text_feat: Tensor,
    image_feat_m: Tensor,
    text_feat_m: Tensor,
    queue: FeatureQueue | None = None,
    temperature: float | Tensor = 0.07,
    alpha: float = 0.4,
    ids: Tensor | None = None,
) -> ItcOutput:
    """ALBEF's image-text contrastive loss with momentum distillation (COPA Appendix B).

    ``image_feat``/``text_feat`` (B, D) are the projected [CLS] features of the online
    encoders, ``*_m`` those of the momentum encoders; all are L2-normalised here (idempotent).
    Negatives are the batch's momentum features followed by the queue's. Targets are
    ``alpha * softmax(momentum similarity) + (1 - alpha) * ground truth`` (ALBEF eq. 5-6); the
    ground truth is one-hot on the diagonal, or with ``ids`` (B,) uniform over every column of
    the same id (ALBEF's retrieval fine-tuning), which needs a queue built ``with_ids``.
    Computed in float32. The caller enqueues the (gathered) momentum features afterwards.
    """
    b = image_feat.shape[0]
    image_feat = F.normalize(image_feat.float(), dim=-1)  # (B, D)
    text_feat = F.normalize(text_feat.float(), dim=-1)  # (B, D)
    with torch.no_grad():
        image_m = F.normalize(image_feat_m.detach().float(), dim=-1)  # (B, D)
        text_m = F.normalize(text_feat_m.detach().float(), dim=-1)  # (B, D)
        image_all, text_all, ids_all = image_m, text_m, ids
        if queue is not None and len(queue) > 0:
            q_image, q_text, q_ids = queue.contents()  # (Q, D), (Q, D), (Q,)
            image_all = torch.cat([image_m, q_image.to(image_m)])  # (B+Q, D)
            text_all = torch.cat([text_m, q_text.to(text_m)])  # (B+Q, D)
            if ids is not None:
                if q_ids is None:
                    raise ValueError("itc_loss got ids but the queue stores none: FeatureQueue(with_ids=True)")
                ids_all = torch.cat([ids, q_ids.to(ids)])  # (B+Q,)
        if ids is None:
            targets = torch.eye(b, image_all.shape[0], device=image_m.device)  # (B, B+Q) one-hot
        else:
            pos = (ids[:, None] == ids_all[None, :]).float()  # (B, B+Q)
            targets = pos / pos.sum(1, keepdim=True)
        targets_i2t = targets_t2i = targets
        if alpha > 0:  # ALBEF momentum distillation: soft pseudo-targets
            sim_i2t_m = image_m @ text_all.T / temperature  # (B, B+Q)
            sim_t2i_m = text_m @ image_all.T / temperature  # (B, B+Q)
            targets_i2t = alpha * sim_i2t_m.softmax(1) + (1 - alpha) * targets
            targets_t2i = alpha * sim_t2i_m.softmax(1) + (1 - alpha) * targets
    sim_i2t = image_feat @ text_all.T / temperature  # (B, B+Q)
    sim_t2i = text_feat @ image_all.T / temperature  # (B, B+Q)
    loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * targets_i2t).sum(1).mean()
    loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * targets_t2i).sum(1).mean()
    return ItcOutput((loss_i2t + loss_t2i) / 2, sim_i2t, sim_t2i)


def contrastive_loss(image_feat: Tensor, text_feat: Tensor, temperature: float | Tensor = 0.07, ids: Tensor | None = None) -> Tensor:
    """Symmetric in-batch InfoNCE (CLIP): row i of ``image_feat`` and ``text_feat`` (B, D) is a
    pair, every other row a negative; gradients reach both sides. L2-normalised here, float32.
    ``ids`` (B,): rows sharing an id (captions of one image) are left out of each other's
    negatives rather than pushed apart."""
    image_feat = F.normalize(image_feat.float(), dim=-1)
    text_feat = F.normalize(text_feat.float(), dim=-1)
    logits = image_feat @ text_feat.T / temperature  # (B, B)
    if ids is not None:
        same = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
