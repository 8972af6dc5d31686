"""Issue 19: the oracle and random selectors bracket the others, and target-patch recall measures
how much of what each VQA question is about every selector keeps (copa pretrain-eval)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from timm.models.vision_transformer import Block

from copa.config import ParamsError, load_params
from copa.data.layout import DataLayout
from copa.data.tokenizer import load_tokenizer, train_wordpiece
from copa.eval.target_recall import target_questions, target_recall
from copa.eval.target_recall_record import KEEP_RATIOS
from copa.models.copa import CopaModel
from copa.models.objectives.pta import kept_mask
from copa.models.selectors import build_selector, num_keep
from copa.models.vit import VisionEncoder
from copa.train.build import copa_spec, single_stream_spec

from conftest import PARAMS_DIR

N, D = 16, 32  # a 4 x 4 grid of patches


def _encoder(name: str, keep_ratio: float = 0.5, **options) -> VisionEncoder:
    torch.manual_seed(0)
    return VisionEncoder(build_selector(name, D, keep_ratio=keep_ratio, **options), 2, img_size=64, patch_size=16, embed_dim=D,
                         depth=4, num_heads=2).eval()


def _targets() -> torch.Tensor:
    targets = torch.zeros(2, N, dtype=torch.bool)
    targets[0, [5, 6, 9, 10]] = True  # a box in the middle
    targets[1, [3, 15]] = True
    return targets


@torch.no_grad()
def test_the_oracle_keeps_the_target_patches_at_the_tpds_cost():
    images, targets = torch.randn(2, 3, 64, 64), _targets()
    out = _encoder("oracle")(images, targets=targets)
    keep = num_keep(N, 0.5, "round")
    kept = kept_mask(out["kept"], N)
    assert (kept & targets).equal(targets) and (kept.sum(1) == keep).all()
    # the rest filled in raster order: the first non-target patches
    assert out["kept"][1].tolist() == [0, 1, 2, 3, 4, 5, 6, 15]
    tpd = _encoder("tpd", text_dim=D)(images, torch.randn(2, D))
    assert out["tokens"].shape == tpd["tokens"].shape  # 1 + K + 1 tokens: the same cost downstream
    # more targets than K: the first K of them
    many = torch.ones(2, N, dtype=torch.bool)
    assert _encoder("oracle", 0.25)(images, targets=many)["kept"].tolist() == [[0, 1, 2, 3]] * 2


@torch.no_grad()
def test_the_oracle_needs_targets_except_text_free():
    encoder, images = _encoder("oracle"), torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="oracle selector needs targets"):
        encoder(images)
    with pytest.raises(ValueError, match=r"oracle targets must be \(batch, patches\)"):
        encoder(images, targets=torch.zeros(2, N - 1, dtype=torch.bool))
    # text-free (warm-up, captioning): image-[CLS] attention at the same place, as the TPD
    reference = _encoder("cls_attention")
    assert encoder(images, use_detector=False)["kept"].equal(reference(images)["kept"])


@torch.no_grad()
def test_random_keeps_k_patches_drawn_from_the_seed():
    encoder, images = _encoder("random", 0.3), torch.randn(2, 3, 64, 64)
    torch.manual_seed(7)
    first = encoder(images)["kept"]
    torch.manual_seed(7)
    assert encoder(images)["kept"].equal(first)
    assert first.shape == (2, num_keep(N, 0.3, "round")) and all(len(set(row.tolist())) == first.shape[1] for row in first)
    draws = {tuple(encoder(images)["kept"][0].tolist()) for _ in range(5)}
    assert len(draws) > 1  # a fresh draw per call


@torch.no_grad()
def test_reference_selectors_fuse_the_mean_of_the_dropped_patches():
    torch.manual_seed(0)
    block, x = Block(D, 2), torch.randn(2, 1 + N, D)
    for name in ("oracle", "random"):
        torch.manual_seed(1)
        out = build_selector(name, D, keep_ratio=0.5)(block, x, targets=_targets())
        patches = block(x)[:, 1:]
        dropped = ~kept_mask(out.kept, N)
        mean = torch.stack([patches[b][dropped[b]].mean(0) for b in range(2)])
        assert out.tokens.shape == (2, 1 + 8 + 1, D) and torch.allclose(out.tokens[:, -1], mean, atol=1e-6), name


def test_the_selection_methods_name_oracle_and_random():
    for method in ("oracle", "random"):
        params = load_params("fixture", [f"model.selection.method={method}"], params_dir=PARAMS_DIR)
        model = CopaModel(copa_spec(params, 50))
        assert type(model.vision.selector).__name__ == f"{method.capitalize()}Selector"
        single = load_params("fixture", ["architecture=single_stream", f"model.selection.method={method}"], params_dir=PARAMS_DIR)
        with pytest.raises(ParamsError, match="a single-stream model selects with one of"):
            single_stream_spec(single, 50)


# --------------------------------------------------------------------- target-patch recall
@pytest.fixture(scope="module")
def recall(fixture_world, tmp_path_factory):
    params = load_params("fixture", params_dir=PARAMS_DIR)
    labels = params.patch_labels
    questions = target_questions(DataLayout(fixture_world), "val2014", labels.image_size, labels.patch_size, labels.min_overlap)
    vocab = tmp_path_factory.mktemp("vocab")
    train_wordpiece([e.question for e in questions.examples], params.model.vocab_size, vocab)
    tokenizer = load_tokenizer(vocab / "vocab.txt")
    torch.manual_seed(0)
    model = CopaModel(copa_spec(params, len(tokenizer))).eval()  # untrained: its TPD and [CLS] attention are near chance
    return questions, target_recall(model, tokenizer, questions, params.model.max_text_length, progress=False), (model, tokenizer, params)


def test_target_patches_come_from_the_referent_boxes(recall):
    questions, result, _ = recall
    assert result["questions"] == len(questions.examples) > 0 and result["skipped_without_referent"] > 0  # "how many ...? 0"
    assert questions.targets.shape == (len(questions.examples), N) and (questions.targets.sum(1) > 0).all()
    assert list(result["selectors"]) == ["tpd", "cls_attention", "oracle", "random"]


def test_oracle_and_random_bracket_the_selectors(recall):
    questions, result, _ = recall
    per_question = questions.targets.sum(1).float()
    for i, ratio in enumerate(KEEP_RATIOS):
        keep = num_keep(N, ratio, "round")
        rows = {name: by_ratio[i] for name, by_ratio in result["selectors"].items()}
        assert all(row["keep_ratio"] == ratio and row["kept"] == keep for row in rows.values())
        # the oracle finds min(K, targets) of each question's targets: 1.0 wherever K covers them
        assert rows["oracle"]["mean"] == pytest.approx(float((per_question.clamp(max=keep) / per_question).mean()))
        assert rows["oracle"]["micro"] == pytest.approx(float(per_question.clamp(max=keep).sum() / per_question.sum()))
        assert rows["random"]["micro"] == pytest.approx(keep / N, abs=0.1)  # K / n in expectation
        for name in ("tpd", "cls_attention", "random"):
            assert rows[name]["mean"] <= rows["oracle"]["mean"] and rows[name]["micro"] <= rows["oracle"]["micro"]
    assert result["selectors"]["oracle"][-1]["micro"] == 1.0  # 70%: K = 11 covers every question's targets here


def test_target_recall_is_deterministic_for_a_seed(recall):
    questions, result, (model, tokenizer, params) = recall
    assert target_recall(model, tokenizer, questions, params.model.max_text_length, progress=False) == result
    other = target_recall(model, tokenizer, questions, params.model.max_text_length, seed=1, progress=False)["selectors"]
    assert other["random"] != result["selectors"]["random"]  # the seed draws the random selection
    assert all(other[name] == result["selectors"][name] for name in ("tpd", "cls_attention", "oracle"))


def test_pretrain_eval_reports_target_recall(fixture_world, fixture_pretraining_run, tmp_path):
    from copa.cli import main

    args = ["pretrain-eval", "--run", str(fixture_pretraining_run), "--checkpoints", "last", "--quiet", "--figure", str(tmp_path / "figure")]
    assert main([*args, "--root", str(fixture_world), "--json", str(tmp_path / "probe.json")]) == 0
    (probe,) = json.loads((tmp_path / "probe.json").read_text())["checkpoints"]
    table = probe["target_recall"]
    assert set(table["selectors"]) == {"tpd", "cls_attention", "oracle", "random"}
    assert [row["keep_ratio"] for row in table["selectors"]["oracle"]] == list(KEEP_RATIOS)
    # real data has no referents.json: a note instead of the table
    real = tmp_path / "world"
    shutil.copytree(fixture_world, real)
    (real / "referents.json").unlink()
    assert main([*args, "--root", str(real), "--json", str(tmp_path / "real.json")]) == 0
    result = json.loads((tmp_path / "real.json").read_text())
    assert "not measured" in result["target_recall"]["note"] and "target_recall" not in result["checkpoints"][0]


def test_pretraining_with_the_oracle_is_refused_at_build():
    from copa.train.build import build_pretraining

    params = load_params("fixture", ["model.selection.method=oracle"], params_dir=PARAMS_DIR)
    with pytest.raises(ParamsError, match="model.selection.method oracle"):
        build_pretraining(params, None)
