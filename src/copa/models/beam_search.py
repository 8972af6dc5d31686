"""Beam search of the project's own, for the decoder's captions, VQA answers and box tokens.

transformers' ``generate()`` with cross-attention has broken across versions in upstream VLP code
(ENVIRONMENT.md); this loop only needs a function from the tokens so far to next-token logits.

Scoring: a hypothesis's score is the sum of its tokens' log-probabilities divided by
``length ** length_penalty``, length = the generated tokens, EOS included (the BOS prompt is not
counted); ``length_penalty = 0`` ranks by the plain sum. Early stopping: a batch element is done
once it has ``beam_size`` finished hypotheses (EOS emitted); at ``max_length`` the open beams are
finished as they are. With ``beam_size = 1`` this is greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BeamSearchOutput:
    sequences: list[list[int]]  # per batch element, the best hypothesis's generated ids (EOS included if emitted)
    scores: Tensor  # (B,) their length-normalised log-probabilities


@torch.no_grad()
def beam_search(
    next_logits: Callable[[Tensor], Tensor],
    batch_size: int,
    bos_id: int,
    eos_id: int,
    beam_size: int,
    max_length: int,
    length_penalty: float = 1.0,
    min_length: int = 1,
    device: torch.device | str = "cpu",
) -> BeamSearchOutput:
    """``next_logits(tokens (B * beam_size, t)) -> (B * beam_size, V)``: the next-token logits of each
    row's prefix. Rows ``b * beam_size + j`` belong to batch element ``b`` for the whole search (so
    the caller repeats its image / question states ``beam_size`` times once, row-interleaved, and
    never reorders them). ``min_length``: EOS is not allowed before this many generated tokens.
    """
    if beam_size < 1 or max_length < 1:
        raise ValueError(f"beam_size and max_length must be >= 1, got {beam_size} and {max_length}")
    rows = batch_size * beam_size
    tokens = torch.full((rows, 1), bos_id, dtype=torch.long, device=device)
    # only the first beam of each element is live at the start, so the first step expands it alone
    beam_scores = torch.full((batch_size, beam_size), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size

    def normalised(total: float, length: int) -> float:
        return total / (length ** length_penalty)

    for step in range(1, max_length + 1):
        logp = torch.log_softmax(next_logits(tokens).float(), dim=-1)  # (rows, V)
        if step < min_length:
            logp[:, eos_id] = float("-inf")
        vocab = logp.shape[1]
        candidates = (beam_scores.reshape(rows, 1) + logp).view(batch_size, beam_size * vocab)
        top_scores, top_ids = candidates.topk(min(2 * beam_size, beam_size * vocab), dim=1)
        next_rows, next_tokens, next_scores = [], [], []
        for b in range(batch_size):
            kept = 0
            for score, flat in zip(top_scores[b].tolist(), top_ids[b].tolist()):
                if kept == beam_size or score == float("-inf"):
                    break
                beam, token = divmod(flat, vocab)
                row = b * beam_size + beam
                if token == eos_id:
                    if not done[b] and len(finished[b]) < beam_size:
                        finished[b].append((normalised(score, step), tokens[row, 1:].tolist() + [eos_id]))
                    continue
                next_rows.append(row)
                next_tokens.append(token)
                next_scores.append(score if not done[b] else float("-inf"))
                kept += 1
            while kept < beam_size:  # fewer live candidates than beams: pad with dead beams
                next_rows.append(b * beam_size)
                next_tokens.append(eos_id)
                next_scores.append(float("-inf"))
                kept += 1
            done[b] = done[b] or len(finished[b]) >= beam_size
        if all(done):
            break
        order = torch.tensor(next_rows, device=device)
        tokens = torch.cat([tokens[order], torch.tensor(next_tokens, device=device)[:, None]], dim=1)
        beam_scores = torch.tensor(next_scores, device=device).view(batch_size, beam_size)
    else:  # max_length reached: the open beams end here
        for b in range(batch_size):
            for j in range(beam_size):
                score = float(beam_scores[b, j])
                if not done[b] and score > float("-inf"):
                    finished[b].append((normalised(score, max_length), tokens[b * beam_size + j, 1:].tolist()))
    best = [max(hyps, key=lambda h: h[0]) if hyps else (float("-inf"), []) for hyps in finished]
    return BeamSearchOutput([seq for _, seq in best], torch.tensor([score for score, _ in best]))
