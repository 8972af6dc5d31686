"""The decoder side of the generative tasks (VQA answers, captions, box tokens), on CopaModel:
condition the decoder on an image and a text, score target sequences, decode by beam search
(:mod:`copa.models.beam_search`), sample (SCST).

Sequences are ``[CLS] w_1 .. w_n [SEP]`` as the tokenizer writes them: [CLS] is the decoder's
BOS and [SEP] its EOS, as in PrefixLM pretraining.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from copa.config import DecodingParams
from copa.data.tokenizer import SPECIAL_TOKENS
from copa.eval.module_costs import call_flops
from copa.models.beam_search import beam_search
from copa.models.copa import CopaModel

# BOS ([CLS]) and EOS ([SEP]) in the project's WordPiece layout: decoding without a tokenizer (cost models)
LAYOUT_SPECIAL_IDS = SimpleNamespace(cls_token_id=SPECIAL_TOKENS.index("[CLS]"), sep_token_id=SPECIAL_TOKENS.index("[SEP]"))


class Conditioning(NamedTuple):
    """What the decoder cross-attends to: the fused image and text states (mPLUG)."""

    image: Tensor  # (B, Li, H)
    text: Tensor  # (B, Lt, H)
    text_mask: Tensor  # (B, Lt)
    scores: Tensor | None = None  # (B, n) the TPD's scores of the n patches, where the selection had them

    def select(self, rows: Tensor) -> Conditioning:
        return Conditioning(self.image[rows], self.text[rows], self.text_mask[rows], None if self.scores is None else self.scores[rows])


def condition(model: CopaModel, images: Tensor, input_ids: Tensor, attention_mask: Tensor, guided: bool,
              targets: Tensor | None = None) -> Conditioning:
    """Encode the text, the image with the TPD guided by the text [CLS] (``guided``) or selected by
    image-[CLS] attention (captioning: no text to guide), and fuse them; ``targets`` (B, n): the
    patches each text refers to, for the oracle selector."""
    text = model.encode_text(input_ids, attention_mask)
    vision = model.encode_image(images, text[:, 0], use_detector=guided, targets=targets)
    fused_image, fused_text = model.fuse(vision["tokens"], text, attention_mask)
    return Conditioning(fused_image, fused_text, attention_mask, vision.get("scores"))  # perfect tokens: no detector


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``[CLS] .. [SEP]`` ids and masks (B, L)."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def sequence_log_probs(model: CopaModel, cond: Conditioning, target_ids: Tensor, target_mask: Tensor) -> Tensor:
    """(B,) sum of log p(token t | tokens < t) over each target's tokens after BOS (EOS included)."""
    logits = model.decode(target_ids, target_mask, cond.image, cond.text, cond.text_mask)  # (B, T, V)
    logp = logits[:, :-1].log_softmax(-1).gather(-1, target_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    return (logp * target_mask[:, 1:]).sum(1)


def _next_logits(model: CopaModel, cond: Conditioning):
    def next_logits(tokens: Tensor) -> Tensor:
        return model.decode(tokens, torch.ones_like(tokens), cond.image, cond.text, cond.text_mask)[:, -1]
    return next_logits


@torch.no_grad()
def generate(model: CopaModel, cond: Conditioning, tokenizer, settings: DecodingParams) -> list[list[int]]:
    """Beam search from BOS; per row the best sequence's ids (EOS included when emitted)."""
    batch, beam = cond.image.shape[0], settings.beam_size
    expanded = cond.select(torch.arange(batch, device=cond.image.device).repeat_interleave(beam))
    out = beam_search(_next_logits(model, expanded), batch, tokenizer.cls_token_id, tokenizer.sep_token_id, beam,
                      settings.max_length, settings.length_penalty, settings.min_length, device=cond.image.device)
    return out.sequences


def full_length(settings: DecodingParams, tokens: int | None = None) -> DecodingParams:
    """``settings`` made to generate exactly ``tokens`` (default: its ``max_length``), min = max length,
    so that random weights write the longest answer: the most one costs."""
    tokens = tokens or settings.max_length
    return dataclasses.replace(settings, max_length=tokens, min_length=tokens)


def answer_flops(model: CopaModel, images: Tensor, input_ids: Tensor, attention_mask: Tensor, decoding: DecodingParams,
                 answer_tokens: int | None = None) -> int:
    """FLOPs (``copa.eval.flops``'s counting) of the decoder writing one answer per row as VQA
    evaluation does (``generate``: beam search with ``decoding``'s beam) over the full
    ``answer_tokens`` (default: ``decoding.max_length``), after the understanding forward (not counted)."""
    with torch.no_grad():
        cond = condition(model, images, input_ids, attention_mask, guided=True)
    return call_flops(lambda: generate(model, cond, LAYOUT_SPECIAL_IDS, full_length(decoding, answer_tokens)))


@torch.no_grad()
def sample(model: CopaModel, cond: Conditioning, bos_id: int, eos_id: int, samples: int, max_length: int,
           generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``samples`` sequences per row drawn from the decoder's distribution (rows ``b * samples + j``):
    ids (B * samples, T) starting with BOS, and masks covering each up to its EOS."""
    rows = torch.arange(cond.image.shape[0], device=cond.image.device).repeat_interleave(samples)
    expanded = cond.select(rows)
    next_logits = _next_logits(model, expanded)
    tokens = torch.full((len(rows), 1), bos_id, dtype=torch.long, device=rows.device)
    alive = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    mask = torch.ones_like(tokens)
    for _ in range(max_length):
        probs = next_logits(tokens).float().softmax(-1)
        drawn = torch.multinomial(probs.cpu(), 1, generator=generator).to(rows.device)[:, 0]
        tokens = torch.cat([tokens, drawn[:, None]], dim=1)
        mask = torch.cat([mask, alive[:, None].long()], dim=1)
        alive &= drawn != eos_id
        if not alive.any():
            break
    return tokens.masked_fill(mask == 0, 0), mask


def decode_text(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()
