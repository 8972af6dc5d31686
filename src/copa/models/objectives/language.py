"""The language objectives: MLM (BERT §3.1, ALBEF; COPA Appendix B: 15% of tokens) and PrefixLM
(mPLUG, PALM; COPA Appendix B), with the token cross-entropy they share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from copa.models.objectives.draws import draw_device

IGNORE_INDEX = -100  # label of positions that take no loss (torch's cross_entropy default)


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
    u = torch.rand(shape, generator=generator, device=draw_device(generator, device)).to(device)  # (B, L)
    masked = (u < prob) & eligible
    if at_least_one:
        need = eligible.any(1) & ~masked.any(1)  # (B,)
        pick = u.masked_fill(~eligible, 2.0).argmin(1)  # (B,) eligible token of lowest draw
        cols = torch.arange(shape[1], device=device)
        masked |= need[:, None] & (cols[None, :] == pick[:, None])
    action = torch.rand(shape, generator=generator, device=draw_device(generator, device)).to(device)  # (B, L) BERT 80/10/10
    to_mask = masked & (action < 0.8)
    to_random = masked & (action >= 0.8) & (action < 0.9)
    vocab = torch.arange(vocab_size, device=device, dtype=input_ids.dtype)
    candidates = vocab[~torch.isin(vocab, torch.cat([special, special.new_tensor([mask_id])]))]
    if candidates.numel() == 0:
        raise ValueError(f"no token left for random replacement in a vocabulary of {vocab_size}")
    random_tok = candidates[torch.randint(len(candidates), shape, generator=generator, device=draw_device(generator, device)).to(device)]
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
    u = torch.rand(b, generator=generator, device=draw_device(generator, input_ids.device)).to(input_ids.device)
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
