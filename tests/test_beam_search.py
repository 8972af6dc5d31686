"""The project's beam search (copa.models.beam_search) on toy next-token models."""

from __future__ import annotations

import math

import pytest
import torch

from copa.models.beam_search import beam_search

BOS, EOS, V = 0, 1, 6


def markov(table: torch.Tensor, memory: torch.Tensor | None = None):
    """next_logits of a chain: logits depend on the last token (and, per row, on ``memory``)."""
    def next_logits(tokens: torch.Tensor) -> torch.Tensor:
        logits = table[tokens[:, -1]]
        return logits if memory is None else logits + memory
    return next_logits


def greedy(next_logits, max_length: int, min_length: int = 1) -> list[int]:
    tokens = torch.tensor([[BOS]])
    out = []
    for step in range(1, max_length + 1):
        logits = next_logits(tokens)[0].clone()
        if step < min_length:
            logits[EOS] = float("-inf")
        token = int(logits.argmax())
        out.append(token)
        if token == EOS:
            break
        tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_beam_one_is_greedy(seed: int) -> None:
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(seed)) * 3
    for min_length in (1, 3):
        out = beam_search(markov(table), 1, BOS, EOS, beam_size=1, max_length=8, min_length=min_length)
        assert out.sequences[0] == greedy(markov(table), 8, min_length)


def test_beam_finds_what_greedy_misses() -> None:
    # A (0.6) leads on only at p <= 0.5 per token; B (0.4) ends at once with p = 1
    p = torch.full((V, V), 1e-9)
    p[BOS, 2], p[BOS, 3] = 0.6, 0.4
    p[2, 2:] = 0.25  # after A: four tokens at 0.25 each, no EOS; at best 0.6 x 0.25 x 1 < 0.4
    p[3, EOS] = p[4, EOS] = p[5, EOS] = 1.0
    table = p.log()
    assert greedy(markov(table), 4)[0] == 2
    out = beam_search(markov(table), 1, BOS, EOS, beam_size=2, max_length=4, length_penalty=0.0)
    assert out.sequences[0] == [3, EOS]
    assert out.scores[0].item() == pytest.approx(math.log(0.4), abs=1e-5)


def test_scores_are_length_normalised_log_probabilities() -> None:
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(7))
    out = beam_search(markov(table), 1, BOS, EOS, beam_size=3, max_length=6, length_penalty=0.7)
    seq = out.sequences[0]
    logp = torch.log_softmax(table, dim=-1)
    total = sum(float(logp[a, b]) for a, b in zip([BOS] + seq[:-1], seq))
    assert out.scores[0].item() == pytest.approx(total / len(seq) ** 0.7, abs=1e-5)


def test_batch_elements_are_independent() -> None:
    generator = torch.Generator().manual_seed(3)
    table = torch.randn(V, V, generator=generator)
    memories = torch.randn(3, V, generator=generator) * 2  # one per batch element
    beam = 4
    batched = beam_search(markov(table, memories.repeat_interleave(beam, dim=0)), 3, BOS, EOS, beam, max_length=7)
    for b in range(3):
        alone = beam_search(markov(table, memories[b:b + 1].repeat_interleave(beam, dim=0)), 1, BOS, EOS, beam, max_length=7)
        assert batched.sequences[b] == alone.sequences[0]
        assert batched.scores[b].item() == pytest.approx(alone.scores[0].item())


def test_max_length_ends_open_beams_and_bad_sizes_fail() -> None:
    table = torch.zeros(V, V)
    table[:, EOS] = -1e9  # EOS never wins
    out = beam_search(markov(table), 2, BOS, EOS, beam_size=2, max_length=5)
    assert all(len(seq) == 5 and EOS not in seq for seq in out.sequences)
    with pytest.raises(ValueError, match="beam_size and max_length"):
        beam_search(markov(table), 1, BOS, EOS, beam_size=0, max_length=5)
