"""Held-out probes of pretraining: recall@K definitions, the held-out sets (never pretrained on),
and patch-detection bookkeeping on a real (tiny, untrained) model."""

from __future__ import annotations

import math

import pytest
import torch

from copa.config import load_params
from copa.data.formats import coco, karpathy
from copa.data.heldout import heldout_object_samples, karpathy_retrieval_set
from copa.data.layout import DataLayout
from copa.data.pretrain_data import image_text_pairs
from copa.data.tokenizer import train_wordpiece, load_tokenizer
from copa.eval.pretraining import patch_detection
from copa.eval.retrieval import RECALL_KS, chance_recall, fit_oracle_recalls, retrieval_recall, two_stage_scores
from copa.models.copa import CopaModel
from copa.train.build import copa_spec

from conftest import PARAMS_DIR


# ------------------------------------------------------------------------------------- R@K
def test_recall_hand_case() -> None:
    # 2 images, 4 texts: texts 0, 1 describe image 0; texts 2, 3 image 1
    text_image = [0, 0, 1, 1]
    sim = torch.tensor([[0.1, 0.9, 0.8, 0.0],   # image 0: best text 1 (its own) -> TR@1 hit
                        [0.7, 0.0, 0.2, 0.6]])  # image 1: best text 0 (image 0's) -> miss; top-2 has text 3 -> hit
    r = retrieval_recall(sim, text_image, ks=(1, 2))
    assert r["tr_r1"] == 50.0 and r["tr_r2"] == 100.0
    # texts: 0 -> image 1 (miss), 1 -> image 0 (hit), 2 -> image 0 (miss), 3 -> image 1 (hit)
    assert r["ir_r1"] == 50.0 and r["ir_r2"] == 100.0
    assert r["r_mean"] == pytest.approx(75.0)


def test_recall_perfect_and_reversed() -> None:
    text_image = [i // 2 for i in range(10)]
    sim = torch.zeros(5, 10)
    sim[torch.tensor(text_image), torch.arange(10)] = 1.0
    perfect = retrieval_recall(sim, text_image)
    assert all(v == 100.0 for v in perfect.values())
    assert retrieval_recall(-sim, text_image)["ir_r1"] == 0.0  # the true image ranked last


def test_recall_rejects_mismatched_ground_truth() -> None:
    with pytest.raises(ValueError, match="3 entries for 4 texts"):
        retrieval_recall(torch.zeros(2, 4), [0, 1, 1])
    with pytest.raises(ValueError, match="must index the 2 images"):
        retrieval_recall(torch.zeros(2, 2), [0, 2])


def test_fit_oracle_recall_hand_case() -> None:
    # 3 images, 2 captions each; caption 0 (image 0's) is true of image 1 too, caption 3 (image 1's) of all three
    true_of = (frozenset({0, 1}), frozenset({0}), frozenset({1}), frozenset({0, 1, 2}), frozenset({2}), frozenset({2}))
    oracle = fit_oracle_recalls(true_of, (0, 0, 1, 1, 2, 2), 3, ks=(1, 2))
    # IR@1: 1/2, 1, 1, 1/3, 1, 1; TR@1: image 0 has 2 own among 3 true, image 1 2 among 3, image 2 2 among 3
    assert oracle["ir_r1"] == pytest.approx(100 * (0.5 + 1 + 1 + 1 / 3 + 1 + 1) / 6)
    assert oracle["tr_r1"] == pytest.approx(100 * 2 / 3)
    # @2: every caption true of at most 2 images is found but caption 3 (2/3); each image's 2 of 3 always hit
    assert oracle["ir_r2"] == pytest.approx(100 * (5 + 2 / 3) / 6) and oracle["tr_r2"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="a caption of image 1 is not true of it"):
        fit_oracle_recalls((frozenset({0}), frozenset({0})), (0, 1), 2)


def test_chance_recall() -> None:
    assert chance_recall(100, 1, 1) == pytest.approx({"tr_r1": 1.0, "ir_r1": 1.0})
    # 5 captions per image among 1,000 texts: P(one of 5 in the top 1) = 5 / 1000
    assert chance_recall(200, 5, 1)["tr_r1"] == pytest.approx(0.5)
    assert chance_recall(200, 5, 10)["tr_r10"] == pytest.approx(100 * (1 - math.comb(995, 10) / math.comb(1000, 10)))


# ------------------------------------------------------------------------------------- held-out sets
def test_heldout_sets_are_the_karpathy_test_images_and_never_pretrained_on(fixture_world) -> None:
    layout = DataLayout(fixture_world)
    params = load_params("fixture", params_dir=PARAMS_DIR)
    _, images = karpathy.read_karpathy(layout.karpathy_coco, layout.coco, check_files=False)
    test_images = [im for im in images if im.split == "test"]
    data = karpathy_retrieval_set(layout, "coco", "test")
    assert list(data.images) == [im.path for im in test_images]
    assert len(data.texts) == sum(len(im.sentences) for im in test_images) == len(data.text_image)
    assert data.texts[data.text_image.index(1)] == test_images[1].sentences[0]
    # the synthetic world says which images each caption is true of: its own always
    assert data.true_of is not None and len(data.true_of) == len(data.texts)  # (caption_fits refuses a caption false of its image)
    flickr = karpathy_retrieval_set(layout, "flickr30k", "test")  # the same writer's captions, another pool of scenes
    assert flickr.true_of is not None and len(flickr.true_of) == len(flickr.texts)
    oracle = fit_oracle_recalls(data.true_of, data.text_image, len(data.images))
    chance = {key: value for k in RECALL_KS for key, value in chance_recall(len(data.images), len(data.texts) / len(data.images), k).items()}
    assert all(chance[key] <= oracle[key] <= 100.0 for key in oracle)

    held = heldout_object_samples(layout, params.filter, "test")
    test_paths = set(data.images)
    assert held.samples and all(s.image in test_paths and s.elems for s in held.samples)
    assert len({s.image for s in held.samples}) == len(held.samples)  # an image once, with all its kept boxes
    assert all(e.text.startswith("This is a") for s in held.samples for e in s.elems)
    # every box of those images is a sample or a counted drop
    boxes = 0
    for split in ("train2014", "val2014"):
        data_split = coco.read_instances(layout.coco_instances(split), layout.coco_images(split), check_files=False)
        boxes += sum(data_split.images[o.image_id].path in test_paths for o in data_split.objects)
    assert held.records == boxes == sum(len(s.elems) for s in held.samples) + sum(held.dropped.values())
    pretrain_images = {p.image for p in image_text_pairs(layout, params.pretrain.pair_sources)}
    assert not pretrain_images & test_paths


def test_heldout_split_is_checked(fixture_world) -> None:
    with pytest.raises(ValueError, match="must be one of val, test"):
        karpathy_retrieval_set(DataLayout(fixture_world), "coco", "train")


# ------------------------------------------------------------------------------------- patch detection
@pytest.mark.parametrize("keep_ratio", [0.5, 1.0])
def test_patch_detection_bookkeeping_on_a_tiny_model(fixture_world, tmp_path, keep_ratio) -> None:
    layout = DataLayout(fixture_world)
    params = load_params("fixture", [f"model.selection.keep_ratio={keep_ratio}"], params_dir=PARAMS_DIR)
    texts = [p.text for p in image_text_pairs(layout, params.pretrain.pair_sources)]
    train_wordpiece(texts + ["This is a ring."], params.model.vocab_size, tmp_path)
    tokenizer = load_tokenizer(tmp_path / "vocab.txt")
    torch.manual_seed(0)
    model = CopaModel(copa_spec(params, len(tokenizer))).eval()
    held = heldout_object_samples(layout, params.filter, "test")
    size, patch = params.patch_labels.image_size, params.patch_labels.patch_size
    result = patch_detection(model, tokenizer, held, size, patch, params.model.max_text_length, 0.0, "same_text", batch_size=7,
                              progress=False)
    n = (size // patch) ** 2
    assert result["samples"] == sum(len(s.elems) for s in held.samples)  # each box an example
    assert result["keep_fraction"] == round(n * keep_ratio) / n
    assert 0 < result["base_rate"] < 1
    for key in ("kept", "score_above_0.5", "cls_attention_kept", "kept_other_text"):
        assert set(result[key]) == {"precision", "recall", "accuracy", "f1"}
    refs = result["ap_references"]
    assert 0 < refs["chance"] < refs["all_boxes"] <= refs["same_text_boxes"] <= 1.0
    assert set(result["score_ap"]) == {"text", "other_text"}
    assert all(refs["chance"] / 3 < ap <= 1.0 for ap in result["score_ap"].values())
    if keep_ratio == 1.0:  # everything kept: recall 1, precision = the base rate
        assert result["kept"]["recall"] == 1.0 and result["cls_attention_kept"]["recall"] == result["kept_other_text"]["recall"] == 1.0
        assert result["kept"]["precision"] == pytest.approx(result["base_rate"])


# ------------------------------------------------------------------------------------- two-stage ranking
def test_retrieval_recall_matches_brute_force() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        n_images, per = 7, 3
        sim = torch.rand(n_images, n_images * per, generator=generator)
        text_image = torch.arange(n_images).repeat_interleave(per)[torch.randperm(n_images * per, generator=generator)]
        result = retrieval_recall(sim, text_image)
        for k in RECALL_KS:
            tr = sum(any(text_image[j] == i for j in sorted(range(sim.shape[1]), key=lambda j: -sim[i, j])[:k]) for i in range(n_images))
            ir = sum(text_image[j] in sorted(range(n_images), key=lambda i: -sim[i, j])[:k] for j in range(sim.shape[1]))
            assert result[f"tr_r{k}"] == pytest.approx(100 * tr / n_images)
            assert result[f"ir_r{k}"] == pytest.approx(100 * ir / sim.shape[1])


def test_two_stage_with_all_candidates_equals_full_reranking() -> None:
    generator = torch.Generator().manual_seed(1)
    coarse = torch.rand(6, 12, generator=generator)
    itm = torch.rand(6, 12, generator=generator)  # the re-ranker's score of every pair
    text_image = torch.arange(6).repeat_interleave(2)
    i2t, t2i = two_stage_scores(coarse, k=12, rerank=lambda i, t: itm[i, t])
    assert torch.equal(i2t, itm) and torch.equal(t2i, itm)
    assert retrieval_recall(i2t, text_image, sim_t2i=t2i) == retrieval_recall(itm, text_image)
    # k = 2: only each query's two coarse candidates are re-scored, the rest drop out
    i2t, t2i = two_stage_scores(coarse, k=2, rerank=lambda i, t: itm[i, t])
    assert (i2t.isfinite().sum(dim=1) == 2).all() and (t2i.isfinite().sum(dim=0) == 2).all()
    kept = coarse.topk(2, dim=1).indices
    assert torch.equal(i2t.gather(1, kept), itm.gather(1, kept))
