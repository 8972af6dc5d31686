"""Pretraining objectives (copa.models.objectives) and schedules (copa.train.schedule)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from copa.models import objectives as obj
from copa.models.objectives import itc, itm, language, pta
from copa.train.schedule import (
    param_groups,
    warmup_cosine,
    warmup_cosine_lambda,
    warmup_cosine_scheduler,
)

CLS, SEP, PAD, MASK, VOCAB = 101, 102, 0, 103, 1000


# ----------------------------------------------------------------------------------- queue / ITC


def _rows(start: int, n: int, dim: int = 4) -> torch.Tensor:
    """Rows whose first column is their global index, to check order."""
    return torch.arange(start, start + n).float()[:, None].expand(n, dim).clone()


def test_queue_any_batch_size_keeps_last_size_in_order() -> None:
    q = itc.FeatureQueue(dim=4, size=10, with_ids=True)
    assert len(q) == 0 and q.contents()[0].shape == (0, 4)
    seen = 0
    for n in (3, 5, 7, 13, 0, 1):
        q.enqueue(_rows(seen, n), -_rows(seen, n), ids=torch.arange(seen, seen + n))
        seen += n
        image, text, ids = q.contents()
        expect = torch.arange(max(0, seen - 10), seen)
        assert len(q) == min(seen, 10)
        assert torch.equal(image[:, 0], expect.float())
        assert torch.equal(text[:, 0], -expect.float())
        assert torch.equal(ids, expect)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 12), batches=st.lists(st.integers(0, 30), max_size=8))
def test_queue_property_last_rows_in_order(size: int, batches: list[int]) -> None:
    q = itc.FeatureQueue(dim=2, size=size)
    seen = 0
    for n in batches:
        q.enqueue(_rows(seen, n, 2), _rows(seen, n, 2))
        seen += n
    assert torch.equal(q.contents()[0][:, 0], torch.arange(max(0, seen - size), seen).float())


def test_queue_state_dict_roundtrip_and_shape_errors() -> None:
    q = itc.FeatureQueue(dim=2, size=4)
    q.enqueue(_rows(0, 6, 2), _rows(0, 6, 2))
    q2 = itc.FeatureQueue(dim=2, size=4)
    q2.load_state_dict(q.state_dict())
    assert torch.equal(q2.contents()[0], q.contents()[0]) and q2.contents()[2] is None
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        q.enqueue(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="ids"):
        itc.FeatureQueue(2, 4, with_ids=True).enqueue(torch.zeros(1, 2), torch.zeros(1, 2))


def test_gather_features_is_noop_without_distributed() -> None:
    t = torch.randn(3, 4)
    assert itc.gather_features(t) is t


@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_gather_features_single_rank_gloo(tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        t = torch.randn(3, 4, requires_grad=True)
        out = itc.gather_features(t)
        assert torch.equal(out, t.detach()) and not out.requires_grad
    finally:
        dist.destroy_process_group()


def _feats(b: int = 6, d: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g) for _ in range(4)]


def test_itc_alpha0_equals_plain_cross_entropy() -> None:
    i, t, _, _ = _feats()
    out = itc.itc_loss(i, t, i, t, queue=None, temperature=0.07, alpha=0.0)
    target = torch.arange(6)
    expect = (F.cross_entropy(out.sim_i2t, target) + F.cross_entropy(out.sim_t2i, target)) / 2
    torch.testing.assert_close(out.loss, expect)
    sim = F.normalize(i, dim=-1) @ F.normalize(t, dim=-1).T / 0.07
    torch.testing.assert_close(out.sim_i2t, sim)


def test_itc_with_queue_distillation_and_ids() -> None:
    i, t, i_m, t_m = _feats()
    q = itc.FeatureQueue(dim=8, size=16, with_ids=True)
    q.enqueue(*_feats(b=5, seed=1)[:2], ids=torch.arange(100, 105))
    temp = itc.Temperature()
    i.requires_grad_(True)
    out = itc.itc_loss(i, t, i_m, t_m, queue=q, temperature=temp(), alpha=0.4)
    assert out.sim_i2t.shape == (6, 11) and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(i.grad).all() and temp.temp.grad is not None
    ids = torch.tensor([0, 0, 1, 2, 3, 4])  # two captions of one image: two positives
    out_ids = itc.itc_loss(i, t, i_m, t_m, queue=q, temperature=0.07, alpha=0.0, ids=ids)
    logp = F.log_softmax(out_ids.sim_i2t.detach(), 1)
    assert torch.isclose(-(logp[0, 0] + logp[0, 1]) / 2, -(logp[0, :2].mean()))
    assert torch.isfinite(out_ids.loss)
    with pytest.raises(ValueError, match="with_ids"):
        q2 = itc.FeatureQueue(dim=8, size=4)
        q2.enqueue(i_m, t_m)
        itc.itc_loss(i, t, i_m, t_m, queue=q2, ids=ids)


def test_temperature_clamped() -> None:
    temp = itc.Temperature(0.07)
    with torch.no_grad():
        temp.temp.fill_(5.0)
    assert temp().item() == 0.5
    with torch.no_grad():
        temp.temp.fill_(-1.0)
    assert temp().item() == pytest.approx(0.001)


def test_momentum_update_and_copy() -> None:
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    itc.copy_to_momentum(a, b)
    assert all(torch.equal(p, q) and not q.requires_grad for p, q in zip(a.parameters(), b.parameters()))
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    before = [q.clone() for q in b.parameters()]
    itc.momentum_update(a, b, m=0.9)
    for p, q, q0 in zip(a.parameters(), b.parameters(), before):
        torch.testing.assert_close(q, 0.9 * q0 + 0.1 * p.detach())
    with pytest.raises(ValueError, match="differ"):
        itc.momentum_update(a, list(b.parameters())[:1])


# ----------------------------------------------------------------------------------- ITM


def test_hard_negatives_never_positive_and_follow_similarity() -> None:
    g = torch.Generator().manual_seed(0)
    b = 8
    sim = torch.randn(b, b + 5, generator=g) * 3
    sim_t2i = torch.randn(b, b + 5, generator=g)
    counts = torch.zeros(b, b)
    for _ in range(100):
        neg_t, neg_i = itm.sample_hard_negatives(sim, sim_t2i, generator=g)
        ar = torch.arange(b)
        assert (neg_t != ar).all() and (neg_i != ar).all()
        assert ((neg_t >= 0) & (neg_t < b)).all()
        counts[ar, neg_t] += 1
    sim_b = sim[:, :b]
    top = sim_b.masked_fill(torch.eye(b, dtype=torch.bool), -1e9).argmax(1)
    assert (counts.argmax(1) == top).float().mean() >= 0.75  # mostly the hardest


def test_hard_negatives_ids_exclude_duplicates() -> None:
    ids = torch.tensor([0, 0, 1, 1, 2])
    sim = torch.zeros(5, 5)
    sim[0, 1] = sim[2, 3] = 100.0  # the same-image duplicate is the most similar
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        neg_t, neg_i = itm.sample_hard_negatives(sim, sim, generator=g, ids=ids)
        assert (ids[neg_t] != ids).all() and (ids[neg_i] != ids).all()


@pytest.mark.parametrize(
    "sim",
    [
        torch.zeros(4, 4),  # all equal: uniform over the others
        torch.full((4, 4), 1e30),  # huge
        torch.full((4, 4), -1e30),  # tiny
        torch.tensor([[0.0, float("inf"), float("-inf"), float("nan")]]).expand(4, 4).clone(),
        (torch.randn(4, 4) * 1e4).bfloat16(),  # bf16, AMP-like
        torch.randn(4, 4).half(),
    ],
    ids=["equal", "huge", "tiny", "inf-nan", "bf16", "fp16"],
)
def test_hard_negatives_valid_on_extreme_values(sim: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        neg_t, neg_i = itm.sample_hard_negatives(sim, sim, generator=g)
        assert (neg_t != torch.arange(4)).all() and ((neg_t >= 0) & (neg_t < 4)).all()
        assert (neg_i != torch.arange(4)).all()
    for sharpness in (1.0, 0.0, 1e35):  # ALBEF's draw, a uniform one, and one past float32 once multiplied
        w, has = itm.negative_weights(sim, sharpness=sharpness)
        assert torch.isfinite(w).all() and has.all() and (w.diagonal() == 0).all()


def test_hard_negatives_all_equal_is_uniform() -> None:
    w, _ = itm.negative_weights(torch.zeros(5, 5))
    p = w / w.sum(1, keepdim=True)
    off = p[~torch.eye(5, dtype=torch.bool)]
    torch.testing.assert_close(off, torch.full_like(off, 0.25))


def test_negative_sharpness_zero_draws_uniformly_and_in_between_prefers_the_similar_less() -> None:
    ids = torch.tensor([0, 0, 1, 2, 3])
    sim = torch.randn(5, 5, generator=torch.Generator().manual_seed(0)) * 2
    probs = {}
    for sharpness in (0.0, 0.5, 1.0):
        w, has = itm.negative_weights(sim, ids, sharpness=sharpness)
        assert has.all() and (w[ids[:, None] == ids[None, :]] == 0).all()  # never the image itself
        probs[sharpness] = w / w.sum(1, keepdim=True)
    allowed = ids[:, None] != ids[None, :]
    expected = allowed / allowed.sum(1, keepdim=True)
    torch.testing.assert_close(probs[0.0], expected.float())  # random negatives
    torch.testing.assert_close(probs[0.5], torch.softmax((sim * 0.5).masked_fill(~allowed, float("-inf")), 1), atol=1e-5, rtol=0)
    top = sim.masked_fill(~allowed, float("-inf")).argmax(1, keepdim=True)
    assert (probs[0.0].gather(1, top) < probs[0.5].gather(1, top)).all()
    assert (probs[0.5].gather(1, top) < probs[1.0].gather(1, top)).all()


def test_hard_negatives_batch_one_and_itm_pairs() -> None:
    neg_t, neg_i = itm.sample_hard_negatives(torch.randn(1, 9), torch.randn(1, 9))
    assert neg_t.tolist() == [itm.NO_NEGATIVE] and neg_i.tolist() == [itm.NO_NEGATIVE]
    image_idx, text_idx, labels = itm.itm_pairs(neg_t, neg_i)
    assert image_idx.tolist() == [0] and text_idx.tolist() == [0] and labels.tolist() == [1]
    # all rows share one id: no negatives at all
    neg_t, _ = itm.sample_hard_negatives(torch.randn(3, 3), torch.randn(3, 3), ids=torch.zeros(3))
    assert (neg_t == itm.NO_NEGATIVE).all()


def test_itm_pairs_order_and_loss() -> None:
    image_idx, text_idx, labels = itm.itm_pairs(torch.tensor([1, 0, -1]), torch.tensor([2, -1, 0]))
    assert image_idx.tolist() == [0, 1, 2, 2, 0, 0, 1]
    assert text_idx.tolist() == [0, 1, 2, 0, 2, 1, 0]
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0]
    logits = torch.randn(7, 2)
    torch.testing.assert_close(itm.itm_loss(logits, labels), F.cross_entropy(logits, labels))


# ----------------------------------------------------------------------------------- MLM


def _captions(b: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [CLS] words [SEP] [PAD].. with random lengths in [3, length]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (b, length), generator=g) % VOCAB
    ids = ids.clamp(min=200)
    lengths = torch.randint(3, length + 1, (b,), generator=g)
    cols = torch.arange(length)
    mask = (cols[None] < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(b), lengths - 1] = SEP
    ids[mask == 0] = PAD
    return ids, mask


def test_mask_tokens_rates_specials_and_determinism() -> None:
    ids, mask = _captions(4000, 40)
    g = torch.Generator().manual_seed(0)
    out, labels = language.mask_tokens(ids, mask, VOCAB, MASK, [CLS, SEP, PAD], generator=g)
    eligible = mask.bool() & (ids != CLS) & (ids != SEP)
    masked = labels != language.IGNORE_INDEX
    assert not (masked & ~eligible).any()  # specials and padding never masked
    assert torch.equal(out[~eligible], ids[~eligible])
    assert torch.equal(labels[masked], ids[masked])
    rate = masked.sum() / eligible.sum()
    assert abs(rate.item() - 0.15) < 0.01
    n = masked.sum().item()
    to_mask = (out == MASK) & masked
    kept = (out == ids) & masked
    to_random = masked & ~to_mask & ~kept
    assert abs(to_mask.sum().item() / n - 0.8) < 0.02
    # a random replacement can equal the original token (1/|vocab|): counted as kept
    assert abs(kept.sum().item() / n - 0.1) < 0.015
    assert abs(to_random.sum().item() / n - 0.1) < 0.015
    assert not torch.isin(out[to_random], torch.tensor([CLS, SEP, PAD, MASK])).any()
    assert masked.any(1)[eligible.any(1)].all()  # at least one per sequence
    again = language.mask_tokens(ids, mask, VOCAB, MASK, [CLS, SEP, PAD], generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out) and torch.equal(again[1], labels)


def test_mask_tokens_no_eligible_token_and_loss() -> None:
    ids = torch.tensor([[CLS, SEP, PAD]])
    out, labels = language.mask_tokens(ids, torch.tensor([[1, 1, 0]]), VOCAB, MASK, [CLS, SEP, PAD])
    assert torch.equal(out, ids) and (labels == language.IGNORE_INDEX).all()
    loss = language.mlm_loss(torch.randn(1, 3, VOCAB, requires_grad=True), labels)
    assert loss.item() == 0.0  # nothing masked: 0, not NaN
    loss.backward()


# ----------------------------------------------------------------------------------- PrefixLM


def test_prefix_split_reconstructs_caption() -> None:
    ids, mask = _captions(200, 12, seed=3)
    g = torch.Generator().manual_seed(0)
    split = language.prefix_lm_split(ids, mask, generator=g)
    ks = []
    for r in range(ids.shape[0]):
        caption = ids[r, mask[r].bool()].tolist()
        prefix = split.prefix_ids[r, split.prefix_mask[r].bool()].tolist()
        target = split.target_ids[r, split.target_mask[r].bool()].tolist()
        assert prefix[0] == CLS and target[0] == CLS and target[-1] == SEP
        assert prefix + target[1:] == caption
        if len(caption) >= 4:  # CLS + 2 words + SEP: one word each side at least
            assert len(prefix) >= 2 and len(target) >= 3
        ks.append(len(prefix) - 1)
    assert len(set(ks)) > 3  # random split points
    assert (split.prefix_ids[split.prefix_mask == 0] == PAD).all()
    again = language.prefix_lm_split(ids, mask, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(again, split))


def test_prefix_split_short_and_bad_padding() -> None:
    split = language.prefix_lm_split(torch.tensor([[CLS, 7, SEP]]), torch.tensor([[1, 1, 1]]))
    assert split.prefix_ids.tolist() == [[CLS]] and split.target_ids.tolist() == [[CLS, 7, SEP]]
    with pytest.raises(ValueError, match="right-padded"):
        language.prefix_lm_split(torch.tensor([[CLS, 7, SEP]]), torch.tensor([[1, 0, 1]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_steps_cpu_generator_draws_for_cuda_tensors() -> None:
    """The step's draws come from one CPU generator: on CUDA tensors they are the CPU draws."""
    ids = torch.randint(5, 40, (4, 9), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones_like(ids)
    sim = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))

    def draws(device):
        g = torch.Generator().manual_seed(7)
        masked, labels = language.mask_tokens(ids.to(device), mask.to(device), 40, 4, [0, 1, 2, 3, 4], 0.5, generator=g)
        split = language.prefix_lm_split(ids.to(device), mask.to(device), generator=g)
        negatives = itm.sample_hard_negatives(sim.to(device), sim.t().to(device), g, ids=torch.tensor([0, 0, 1, 2], device=device))
        return [t.cpu() for t in (masked, labels, split.prefix_ids, *negatives)]

    assert all(torch.equal(a, b) for a, b in zip(draws("cpu"), draws("cuda")))


def test_lm_loss_shifted_and_ignores_padding() -> None:
    target = torch.tensor([[CLS, 5, 6, SEP], [CLS, 8, PAD, PAD]])
    tmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    logits = torch.randn(2, 4, VOCAB, requires_grad=True)
    loss = language.lm_loss(logits, target, tmask)
    pred = torch.cat([logits[0, :3], logits[1, :1]])
    expect = F.cross_entropy(pred, torch.tensor([5, 6, SEP, 8]))
    torch.testing.assert_close(loss, expect)
    smooth = language.lm_loss(logits, target, tmask, label_smoothing=0.1)
    torch.testing.assert_close(smooth, F.cross_entropy(pred, torch.tensor([5, 6, SEP, 8]), label_smoothing=0.1))


# ----------------------------------------------------------------------------------- PTA


def test_pta_equals_torch_bce() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4, 9, generator=g).clamp(0.01, 0.99)
    labels = (torch.rand(4, 9, generator=g) > 0.5).float()
    torch.testing.assert_close(pta.pta_loss(scores, labels), F.binary_cross_entropy(scores, labels))
    logits = torch.logit(scores)
    torch.testing.assert_close(pta.pta_loss_from_logits(logits, labels), F.binary_cross_entropy(scores, labels))
    # hand case: a = 0.5 everywhere -> log 2
    assert pta.pta_loss(torch.full((2, 3), 0.5), labels[:2, :3]).item() == pytest.approx(math.log(2))


def test_pta_mask_reduces_per_sample_then_batch() -> None:
    scores = torch.tensor([[0.9, 0.2, 0.7], [0.4, 0.5, 0.5]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    bce = F.binary_cross_entropy(scores, labels, reduction="none")
    expect = (bce[0].mean() + bce[1, 0]) / 2
    torch.testing.assert_close(pta.pta_loss(scores, labels, mask), expect)
    empty = pta.pta_loss(scores, labels, torch.zeros(2, 3))
    assert empty.item() == 0.0


def test_pta_finite_gradient_at_zero_and_one() -> None:
    scores = torch.tensor([[0.0, 1.0, 0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    loss = pta.pta_loss(scores, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()
    # two wrong at ~-log(1e-7) (1 - 1e-7 rounds in float32), two right at ~0: mean over 4
    assert loss.item() == pytest.approx(-math.log(1e-7) / 2, rel=0.02)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(pta.pta_loss(scores.bfloat16(), labels))


def test_patch_precision_recall_hand_cases() -> None:
    labels = torch.tensor([[1, 1, 0, 0]])
    all_det = pta.patch_precision_recall(torch.tensor([[0.9, 0.8, 0.7, 0.6]]), labels)
    assert (all_det.precision.item(), all_det.recall.item(), all_det.accuracy.item()) == (0.5, 1.0, 0.5)
    none = pta.patch_precision_recall(torch.tensor([[0.1, 0.2, 0.3, 0.5]]), labels)
    assert (none.precision.item(), none.recall.item(), none.accuracy.item()) == (0.0, 0.0, 0.5)
    scores = torch.tensor([[0.9, 0.3, 0.6, 0.1]])
    part = pta.patch_precision_recall(scores, labels)  # detects patches 0 and 2
    assert (part.precision.item(), part.recall.item(), part.accuracy.item()) == (0.5, 0.5, 0.5)
    # top-K: K = round(4 * 0.25) = 1 -> patch 0 only, though 0.6 > 0.5 too
    top = pta.patch_precision_recall(scores, labels, keep_ratio=0.25)
    assert (top.precision.item(), top.recall.item(), top.accuracy.item()) == (1.0, 0.5, 0.75)
    top_all = pta.patch_precision_recall(scores, labels, keep_ratio=1.0)
    assert top_all.recall.item() == 1.0 and top_all.precision.item() == 0.5
    assert top.f1.item() == pytest.approx(2 / 3) and none.f1.item() == 0.0 and part.f1.item() == 0.5
    counts = pta.patch_confusion(torch.cat([scores, scores]), torch.cat([labels, labels]))
    assert [int(c) for c in counts] == [2, 2, 2, 2]


def test_kept_mask_marks_kept_patches_and_ignores_fused_slots() -> None:
    kept = torch.tensor([[3, 0, -1], [-1, -1, 2]])  # -1: a token fused at an earlier layer
    mask = pta.kept_mask(kept, 4)
    assert mask.tolist() == [[True, False, False, True], [False, False, True, False]]
    counts = pta.mask_confusion(mask, torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]]))
    assert [int(c) for c in counts] == [2, 1, 2, 3]  # tp (0, 2), fp (3), fn (1, 3), tn


# ----------------------------------------------------------------------------------- eq. 4


def test_pretrain_loss_sums_weighted_and_rejects_unknown() -> None:
    terms = {name: torch.tensor(float(i + 1)) for i, name in enumerate(obj.LOSS_NAMES)}
    assert obj.pretrain_loss(terms).item() == 15.0  # COPA eq. 4: equal weights
    assert obj.pretrain_loss(terms, {"pta": 0.0, "itc": 2.0}).item() == 15.0 - 5 + 1
    assert obj.pretrain_loss({"itc": torch.tensor(2.0)}).item() == 2.0  # ablations drop terms
    with pytest.raises(ValueError, match="unknown loss term.*'itx'"):
        obj.pretrain_loss({"itx": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="unknown loss weight"):
        obj.pretrain_loss(terms, {"PTA": 1.0})
    with pytest.raises(ValueError, match="scalar"):
        obj.pretrain_loss({"itc": torch.ones(2)})


# ----------------------------------------------------------------------------------- schedule


def test_warmup_cosine_key_steps() -> None:
    kw = {"warmup_steps": 1000, "total_steps": 11000, "base_lr": 1e-4, "min_lr": 1e-6}
    assert warmup_cosine(0, **kw) == pytest.approx(1e-4 / 1001)
    assert warmup_cosine(499, **kw) == pytest.approx(1e-4 * 500 / 1001)
    assert warmup_cosine(1000, **kw) == pytest.approx(1e-4)  # peak right after warm-up
    assert warmup_cosine(6000, **kw) == pytest.approx((1e-4 + 1e-6) / 2)  # cosine midpoint
    assert warmup_cosine(11000, **kw) == pytest.approx(1e-6)
    assert warmup_cosine(50000, **kw) == pytest.approx(1e-6)
    lrs = [warmup_cosine(s, **kw) for s in range(1000, 11001, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert warmup_cosine(0, 0, 0, 1e-4, 1e-6) == 1e-6  # degenerate schedule: no division by 0
    assert warmup_cosine_lambda(8e-7, 10, 100, 1e-6)(50) == pytest.approx(1.0)


def _toy_model() -> nn.Module:
    m = nn.Module()
    m.vit = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    m.text = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    m.temp = nn.Parameter(torch.tensor(0.07))
    m.frozen = nn.Linear(2, 2).requires_grad_(False)
    return m


def test_param_groups_split_and_no_decay() -> None:
    m = _toy_model()
    groups = param_groups(m.named_parameters(), ["vit."], 1e-5, 1e-4, 0.02)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"vision_decay", "vision_no_decay", "text_decay", "text_no_decay"}
    assert by_name["vision_decay"]["params"] == [m.vit[0].weight]
    assert len(by_name["vision_no_decay"]["params"]) == 3  # linear bias, norm weight + bias
    assert any(p is m.temp for p in by_name["text_no_decay"]["params"])
    assert by_name["vision_decay"]["lr"] == 1e-5 and by_name["text_decay"]["lr"] == 1e-4
    assert by_name["vision_no_decay"]["weight_decay"] == 0.0 and by_name["text_decay"]["weight_decay"] == 0.02
    n_trainable = sum(1 for p in m.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_trainable  # frozen left out, none twice


def test_scheduler_per_group_base_lr() -> None:
    m = _toy_model()
    opt = torch.optim.AdamW(param_groups(m.named_parameters(), ["vit."], 1e-5, 1e-4, 0.02))
    sched = warmup_cosine_scheduler(opt, warmup_steps=2, total_steps=10, min_lr=1e-6)
    seen = []
    for _ in range(12):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0][0] == pytest.approx(1e-5 / 3) and seen[0][2] == pytest.approx(1e-4 / 3)
    assert seen[2][0] == pytest.approx(1e-5) and seen[2][2] == pytest.approx(1e-4)
    assert seen[10][0] == pytest.approx(1e-6) and seen[10][2] == pytest.approx(1e-6)


def test_contrastive_loss_is_symmetric_infonce() -> None:
    same = torch.ones(4, 8)
    assert itc.contrastive_loss(same, same).item() == pytest.approx(math.log(4), abs=1e-5)  # nothing to tell apart
    feats = torch.eye(4, 8)
    assert itc.contrastive_loss(feats, feats, 0.05).item() < 1e-3  # each row matches only its pair
    image, text = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    itc.contrastive_loss(image, text).backward()
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0  # both sides learn (CLIP)
    swapped = itc.contrastive_loss(text.detach(), image.detach())
    assert swapped.item() == pytest.approx(itc.contrastive_loss(image.detach(), text.detach()).item())


def test_contrastive_loss_leaves_same_image_captions_out_of_the_negatives() -> None:
    same = torch.ones(4, 8)
    ids = torch.tensor([0, 0, 1, 2])  # two captions of image 0
    # rows 0 and 1 each lose one negative: their terms are ln 3, the others ln 4
    expected = (2 * math.log(3) + 2 * math.log(4)) / 4
    assert itc.contrastive_loss(same, same, 1.0, ids=ids).item() == pytest.approx(expected, abs=1e-5)
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    assert itc.contrastive_loss(image, text, ids=torch.arange(4)).item() == pytest.approx(itc.contrastive_loss(image, text).item())
