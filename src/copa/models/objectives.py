"""Pretraining objectives (COPA §3.3, Algorithm 1, Appendix B) as tensor functions.

Models return features and logits; the functions here turn them into losses (STYLE point 3,
open_clip's ``loss.py``). One small function per job:

- ITC (ALBEF §3.2): :class:`FeatureQueue`, :func:`gather_features`, :class:`Temperature`,
  :func:`momentum_update`, :func:`itc_loss`.
- ITM with hard negatives (ALBEF §3.2): :func:`sample_hard_negatives`, :func:`itm_pairs`,
  :func:`itm_loss`.
- MLM (BERT / ALBEF): :func:`mask_tokens`, :func:`mlm_loss`.
- PrefixLM (mPLUG / PALM): :func:`prefix_lm_split`, :func:`lm_loss`.
- PTA (COPA eq. 3): :func:`pta_loss`, :func:`pta_loss_from_logits`, :func:`patch_confusion`,
  :func:`patch_precision_recall` (Figure 5).
- COPA eq. 4: :func:`pretrain_loss`.

Shapes: B batch, D feature dim, Q queue rows, L/T sequence length, V vocabulary, N patches.
Two lessons from the upstream code (DESIGN.md) are designed in: the queue accepts any batch
size (no ``queue_size % batch_size == 0``), and hard-negative sampling can never hand
``torch.multinomial`` an invalid distribution (float32, epsilon, batch-size-1 guard).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100  # label of positions that take no loss (torch's cross_entropy default)
NO_NEGATIVE = -1  # sample_hard_negatives' index for a row that has no valid negative
_SIM_CLAMP = 1e4  # |similarity| bound before the softmax of the hard-negative sampler


# --------------------------------------------------------------------------------------------
# ITC: queue, DDP gather, temperature, momentum encoder, loss (ALBEF §3.2, COPA Appendix B)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# ITM with hard negatives (ALBEF §3.2, COPA Appendix B)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def negative_weights(sim: Tensor, ids: Tensor | None = None, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Sampling weights (B, B) over in-batch negatives, and which rows have one (B,) bool.

    softmax(sim) in float32 over the allowed columns (not the diagonal, not a column with the
    row's id), plus ``eps`` on allowed columns only, so the positive is never drawn and every
    row with a negative has a positive, finite sum. NaN similarities count as the lowest and
    +-inf are clamped, so ``torch.multinomial`` always gets a valid distribution. A row with no
    allowed column gets a dummy uniform row (its sample must be discarded: see ``has_neg``).
    """
    b = sim.shape[0]
    logits = torch.nan_to_num(sim.float(), nan=-_SIM_CLAMP, posinf=_SIM_CLAMP, neginf=-_SIM_CLAMP)
    logits = logits.clamp(-_SIM_CLAMP, _SIM_CLAMP)  # (B, B)
    if ids is None:
        allowed = ~torch.eye(b, dtype=torch.bool, device=sim.device)  # (B, B)
    else:
        allowed = ids[:, None] != ids[None, :]  # (B, B): also drops duplicates of the same image
    has_neg = allowed.any(1)  # (B,)
    logits = logits.masked_fill(~allowed, float("-inf"))
    logits = torch.where(has_neg[:, None], logits, torch.zeros_like(logits))  # no all -inf rows
    weights = (logits.softmax(1) + eps) * allowed  # (B, B)
    weights = torch.where(has_neg[:, None], weights, torch.ones_like(weights))
    return weights, has_neg


@torch.no_grad()
def sample_hard_negatives(
    sim_i2t: Tensor,
    sim_t2i: Tensor,
    generator: torch.Generator | None = None,
    ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One hard negative per row, drawn with probability softmax(similarity) (ALBEF §3.2).

    ``sim_i2t``/``sim_t2i`` are (B, N) with N >= B, e.g. :class:`ItcOutput`'s (B, B+Q); only
    the first B (in-batch) columns are used. Returns ``neg_text_idx`` (B,), a negative text
    for each image, and ``neg_image_idx`` (B,), a negative image for each text. A row with no
    possible negative (batch size 1, or every sample shares its id) gets ``NO_NEGATIVE`` (-1):
    the caller drops it from ITM, which :func:`itm_pairs` does. Never raises on the values.
    """
    b = sim_i2t.shape[0]
    if sim_t2i.shape[0] != b or min(sim_i2t.shape[1], sim_t2i.shape[1]) < b:
        raise ValueError(
            f"similarities must be (B, N >= B) with the same B, got {tuple(sim_i2t.shape)} "
            f"and {tuple(sim_t2i.shape)}"
        )
    idx = []
    for sim in (sim_i2t[:, :b], sim_t2i[:, :b]):
        weights, has_neg = negative_weights(sim, ids)
        drawn = torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (B,)
        idx.append(torch.where(has_neg, drawn, torch.full_like(drawn, NO_NEGATIVE)))
    return idx[0], idx[1]


def itm_pairs(neg_text_idx: Tensor, neg_image_idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Image index, text index and label (1 match, 0 not) of every ITM example, in ALBEF order.

    Rows: the B positives (b, b); then (neg_image_idx[b], b) for each text; then
    (b, neg_text_idx[b]) for each image; rows whose negative is ``NO_NEGATIVE`` are dropped.
    Shapes (B + n_neg,) each.
    """
    b = neg_text_idx.shape[0]
    ar = torch.arange(b, device=neg_text_idx.device)
    ok_i, ok_t = neg_image_idx >= 0, neg_text_idx >= 0
    image_idx = torch.cat([ar, neg_image_idx[ok_i], ar[ok_t]])
    text_idx = torch.cat([ar, ar[ok_i], neg_text_idx[ok_t]])
    labels = torch.cat([torch.ones(b), torch.zeros(int(ok_i.sum()) + int(ok_t.sum()))]).long()
    return image_idx, text_idx, labels.to(ar.device)


def itm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the ITM head's (n, 2) logits against (n,) labels (ALBEF)."""
    return F.cross_entropy(logits, labels)


# --------------------------------------------------------------------------------------------
# MLM (BERT §3.1, ALBEF; COPA Appendix B: 15% of tokens)
# --------------------------------------------------------------------------------------------


def mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    vocab_size: int,
    mask_id: int,
    special_ids: Sequence[int] | Tensor,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
    at_least_one: bool = True,
) -> tuple[Tensor, Tensor]:
    """BERT masking: (masked_ids (B, L), labels (B, L) with -100 where not masked).

    Each eligible token (attention_mask 1, not in ``special_ids``) is selected with probability
    ``prob``; a selected token becomes ``mask_id`` (80%), a random token (10%) or stays (10%).
    Decisions where BERT/ALBEF are silent or differ:

    - ``at_least_one``: a sequence with an eligible token but no selected one gets its
      eligible token of lowest uniform draw selected, so every caption contributes to MLM
      (ALBEF may select none). This raises the rate by (1 - prob)^n / n for n eligible tokens
      (0.2% for n = 20).
    - random replacements are drawn from the vocabulary minus ``special_ids`` and ``mask_id``
      (BERT draws from the whole vocabulary).

    Deterministic for a given ``generator`` state (or the global RNG when None).
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"MLM probability must be in [0, 1], got {prob}")
    device = input_ids.device
    shape = input_ids.shape  # (B, L)
    special = torch.as_tensor(list(special_ids) if not isinstance(special_ids, Tensor) else special_ids)
    special = special.to(device=device, dtype=input_ids.dtype)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special)  # (B, L)
    u = torch.rand(shape, generator=generator, device=device)  # (B, L)
    masked = (u < prob) & eligible
    if at_least_one:
        need = eligible.any(1) & ~masked.any(1)  # (B,)
        pick = u.masked_fill(~eligible, 2.0).argmin(1)  # (B,) eligible token of lowest draw
        cols = torch.arange(shape[1], device=device)
        masked |= need[:, None] & (cols[None, :] == pick[:, None])
    action = torch.rand(shape, generator=generator, device=device)  # (B, L) BERT 80/10/10
    to_mask = masked & (action < 0.8)
    to_random = masked & (action >= 0.8) & (action < 0.9)
    vocab = torch.arange(vocab_size, device=device, dtype=input_ids.dtype)
    candidates = vocab[~torch.isin(vocab, torch.cat([special, special.new_tensor([mask_id])]))]
    if candidates.numel() == 0:
        raise ValueError(f"no token left for random replacement in a vocabulary of {vocab_size}")
    random_tok = candidates[torch.randint(len(candidates), shape, generator=generator, device=device)]
    out = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    out = torch.where(to_random, random_tok, out)
    labels = torch.where(masked, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return out, labels


def _token_ce(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean CE over labels != -100; 0 (with a graph) when there is none, never NaN."""
    v = logits.shape[-1]
    total = F.cross_entropy(
        logits.reshape(-1, v), labels.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="sum", label_smoothing=label_smoothing,
    )
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE of (B, L, V) logits over the masked positions of (B, L) labels."""
    return _token_ce(logits, labels)


# --------------------------------------------------------------------------------------------
# PrefixLM (mPLUG, PALM; COPA Appendix B)
# --------------------------------------------------------------------------------------------


class PrefixSplit(NamedTuple):
    prefix_ids: Tensor  # (B, P) [CLS] w_1 .. w_k, padded
    prefix_mask: Tensor  # (B, P) long
    target_ids: Tensor  # (B, T) [CLS] w_k+1 .. [SEP], padded; [CLS] is the BOS
    target_mask: Tensor  # (B, T) long


def prefix_lm_split(
    input_ids: Tensor,
    attention_mask: Tensor,
    generator: torch.Generator | None = None,
    min_prefix: int = 1,
    min_target: int = 2,
    pad_id: int = 0,
) -> PrefixSplit:
    """Split each right-padded caption ``[CLS] w_1 .. w_n [SEP]`` at a random point.

    The prefix is ``[CLS] w_1 .. w_k`` (no [SEP] appended), the target ``[CLS] w_k+1 .. [SEP]``:
    [CLS] serves as BOS and the continuation is what :func:`lm_loss` scores. With m tokens
    after [CLS], k is uniform in [min_prefix, m - min_target] (default: at least one word in
    the prefix, one word plus [SEP] in the target). A caption too short for both yields to the
    target: k = max(0, m - min_target) then. Outputs are trimmed to the longest row.
    """
    if min_prefix < 0 or min_target < 1:
        raise ValueError(f"need min_prefix >= 0 and min_target >= 1, got {min_prefix}, {min_target}")
    b, seq = input_ids.shape
    valid = attention_mask.bool()  # (B, L)
    lengths = valid.sum(1)  # (B,) including [CLS] and [SEP]
    cols = torch.arange(seq, device=input_ids.device)
    if not torch.equal(valid, cols[None, :] < lengths[:, None]):
        raise ValueError("prefix_lm_split needs right-padded rows (attention_mask = 1...1 0...0)")
    if bool((lengths < 1).any()):
        raise ValueError("prefix_lm_split needs at least the [CLS] token in every row")
    m = lengths - 1  # (B,) tokens after [CLS]
    hi = (m - min_target).clamp(min=0)  # (B,)
    lo = hi.clamp(max=min_prefix)  # (B,) = min(min_prefix, hi)
    u = torch.rand(b, generator=generator, device=input_ids.device)
    k = lo + (u * (hi - lo + 1)).long().clamp(max=hi - lo)  # (B,) prefix words
    p_len, t_len = int((k + 1).max()), int((m - k + 1).max())
    j = torch.arange(p_len, device=input_ids.device)
    prefix_mask = j[None, :] <= k[:, None]  # (B, P)
    prefix_ids = input_ids[:, :p_len].masked_fill(~prefix_mask, pad_id)
    j = torch.arange(t_len, device=input_ids.device)
    src = (k[:, None] + j[None, :]).clamp(max=seq - 1)  # (B, T) target slot j>=1 <- input k+j
    target_mask = j[None, :] <= (m - k)[:, None]  # (B, T)
    target_ids = torch.where(j[None, :] == 0, input_ids[:, :1], input_ids.gather(1, src))
    target_ids = target_ids.masked_fill(~target_mask, pad_id)
    return PrefixSplit(prefix_ids, prefix_mask.long(), target_ids, target_mask.long())


def lm_loss(logits: Tensor, target_ids: Tensor, target_mask: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Next-token CE: logits (B, T, V) at position t predict ``target_ids[:, t + 1]``.

    Padding (``target_mask`` 0) takes no loss; mean over all scored tokens of the batch.
    """
    labels = target_ids[:, 1:].masked_fill(~target_mask[:, 1:].bool(), IGNORE_INDEX)  # (B, T-1)
    return _token_ce(logits[:, :-1], labels, label_smoothing)


# --------------------------------------------------------------------------------------------
# PTA (COPA §3.3 eq. 3) and the TPD's detection metrics (Figure 5, Appendix C.1)
# --------------------------------------------------------------------------------------------


def _per_sample_mean(bce: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over each sample's valid patches, then over samples that have one."""
    if mask is None:
        return bce.mean(1).mean()
    mask = mask.to(bce.dtype)  # (B, N)
    n = mask.sum(1)  # (B,)
    per_sample = (bce * mask).sum(1) / n.clamp(min=1)  # (B,)
    has = (n > 0).to(bce.dtype)
    return (per_sample * has).sum() / has.sum().clamp(min=1)


def pta_loss(scores: Tensor, labels: Tensor, mask: Tensor | None = None, eps: float = 1e-7) -> Tensor:
    """COPA eq. 3 with its minus sign restored: BCE of the TPD scores a_i against patch labels Y_i.

    ``scores`` (B, N) are sigmoid outputs; ``labels`` (B, N) in {0, 1}; ``mask`` (B, N) marks
    the patches that count (all when None). Reduction: eq. 3's 1/e sum over the e patches of a
    sample, then the mean over samples (the paper does not say; with no mask this equals
    ``F.binary_cross_entropy(..., reduction='mean')``). Scores are clamped to [eps, 1 - eps]
    in float32 so scores of exactly 0 or 1 give a finite loss and zero, not NaN, gradient.
    Prefer :func:`pta_loss_from_logits` when the TPD can return logits.
    """
    a = scores.float().clamp(eps, 1 - eps)
    y = labels.float()
    bce = -(y * torch.log(a) + (1 - y) * torch.log1p(-a))  # (B, N) COPA eq. 3
    return _per_sample_mean(bce, mask)


def pta_loss_from_logits(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """:func:`pta_loss` on pre-sigmoid logits F_theta(h_i) (COPA §3.2): stable, autocast-safe."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return _per_sample_mean(bce, mask)


def num_kept(n: int, keep_ratio: float) -> int:
    """K = round(n * keep_ratio) (Python's round), within [0, n]."""
    return min(max(round(n * keep_ratio), 0), n)


class PatchCounts(NamedTuple):
    tp: Tensor  # () detected and labelled 1
    fp: Tensor  # () detected and labelled 0
    fn: Tensor  # () not detected and labelled 1
    tn: Tensor  # () not detected and labelled 0


@torch.no_grad()
def detected_patches(scores: Tensor, keep_ratio: float | None = None, threshold: float = 0.5) -> Tensor:
    """(B, N) bool: score > threshold, or, with ``keep_ratio``, among the top-K of the row."""
    if keep_ratio is None:
        return scores > threshold
    k = num_kept(scores.shape[1], keep_ratio)
    top = scores.float().topk(k, dim=1).indices  # (B, K)
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)


@torch.no_grad()
def patch_confusion(
    scores: Tensor, labels: Tensor, keep_ratio: float | None = None, threshold: float = 0.5
) -> PatchCounts:
    """Patch-level confusion counts summed over the batch, to accumulate over a dataset."""
    return mask_confusion(detected_patches(scores, keep_ratio, threshold), labels)


@torch.no_grad()
def mask_confusion(detected: Tensor, labels: Tensor) -> PatchCounts:
    """Confusion counts of a (B, N) bool detection against (B, N) 0/1 labels."""
    det, pos = detected.bool(), labels.bool()
    return PatchCounts((det & pos).sum(), (det & ~pos).sum(), (~det & pos).sum(), (~det & ~pos).sum())


@torch.no_grad()
def kept_mask(kept: Tensor, n: int) -> Tensor:
    """(B, N) bool of the patches a selector kept, from its (B, K) indices (-1: none, e.g. a token
    fused at an earlier selection layer)."""
    hits = torch.zeros(kept.shape[0], n + 1, dtype=torch.long, device=kept.device)
    hits.scatter_add_(1, kept.long() + 1, torch.ones_like(kept, dtype=torch.long))  # -1 lands in column 0
    return hits[:, 1:] > 0


class PatchMetrics(NamedTuple):
    precision: Tensor  # () tp / (tp + fp), 0 when nothing is detected
    recall: Tensor  # () tp / (tp + fn), 0 when no patch is labelled 1
    accuracy: Tensor  # () (tp + tn) / all patches
    f1: Tensor  # () 2 tp / (2 tp + fp + fn), the harmonic mean of precision and recall


def metrics_from_counts(c: PatchCounts) -> PatchMetrics:
    """Micro-averaged precision, recall, accuracy, F1; 0/0 is 0 (sklearn's zero_division=0)."""
    tp, fp, fn, tn = (x.double() for x in c)

    def ratio(num: Tensor, den: Tensor) -> Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))

    return PatchMetrics(ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(tp + tn, tp + fp + fn + tn), ratio(2 * tp, 2 * tp + fp + fn))


@torch.no_grad()
def patch_precision_recall(
    scores: Tensor, labels: Tensor, keep_ratio: float | None = None, threshold: float = 0.5
) -> PatchMetrics:
    """TPD detection quality over the patches of a batch (Figure 5: accuracy and recall).

    "Detected" is ``score > threshold`` by default, or "kept among the top-K" with K =
    round(N * keep_ratio) when ``keep_ratio`` is given: the two readings Figure 5 allows.
    ``scores``, ``labels`` (B, N). For a dataset, sum :func:`patch_confusion` over batches and
    call :func:`metrics_from_counts`.
    """
    return metrics_from_counts(patch_confusion(scores, labels, keep_ratio, threshold))


# --------------------------------------------------------------------------------------------
# COPA eq. 4
# --------------------------------------------------------------------------------------------

LOSS_NAMES = ("itc", "itm", "mlm", "prefix", "pta")
DEFAULT_WEIGHTS: dict[str, float] = dict.fromkeys(LOSS_NAMES, 1.0)  # COPA eq. 4: equal weights


def pretrain_loss(terms: Mapping[str, Tensor], weights: Mapping[str, float] | None = None) -> Tensor:
    """L = sum_n w_n L_n over the terms present (COPA eq. 4; Algorithm 1 line 12).

    ``terms`` maps names from ``LOSS_NAMES`` to scalar losses; a term may be absent (e.g.
    "pta" in the w/o-PTA ablation). ``weights`` default to 1 (equal weights, eq. 4); a weight
    not given is 1. Unknown names in either raise ``ValueError``.
    """
    weights = {} if weights is None else weights
    for kind, names in (("loss term", terms), ("loss weight", weights)):
        unknown = sorted(set(names) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown {kind} name(s) {unknown}; expected some of {list(LOSS_NAMES)}")
    if not terms:
        raise ValueError("pretrain_loss needs at least one loss term")
    total = None
    for name, value in terms.items():
        if value.dim() != 0:
            raise ValueError(f"loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")
        term = weights.get(name, DEFAULT_WEIGHTS[name]) * value
        total = term if total is None else total + term
    return total
