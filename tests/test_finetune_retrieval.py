"""Retrieval fine-tuning and two-stage evaluation (copa.tasks.retrieval) on the fixture world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from copa.cli import main
from copa.config import load_params
from copa.data.heldout import karpathy_retrieval_set, karpathy_training_pairs
from copa.data.layout import DataLayout
from copa.eval.retrieval import encode_retrieval_set, retrieval_recall
from copa.tasks.retrieval import RetrievalFinetuning, evaluate_retrieval
from copa.train.finetune import start_from

PARAMS_DIR = Path(__file__).parents[1] / "params"


def test_training_pairs_are_the_karpathy_training_images(fixture_world) -> None:
    layout = DataLayout(fixture_world)
    pairs, image_ids = karpathy_training_pairs(layout, "coco")
    test_images = set(karpathy_retrieval_set(layout, "coco", "test").images) | set(karpathy_retrieval_set(layout, "coco", "val").images)
    assert pairs and not {p.image for p in pairs} & test_images
    assert len(image_ids) == len(pairs) and len(set(image_ids)) == len({p.image for p in pairs})


def test_finetune_then_evaluate_from_the_cli(fixture_world, fixture_pretraining_run, tmp_path, capsys) -> None:
    base = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR)]
    run = tmp_path / "finetune" / "run"
    assert main(base + ["finetune", "--task", "retrieval", "--pretrained", str(fixture_pretraining_run), "--root", str(fixture_world), "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    params = load_params("fixture", params_dir=PARAMS_DIR)
    assert metrics["step"] == params.finetune.retrieval.epochs * params.finetune.retrieval.steps_per_epoch
    assert torch.isfinite(torch.tensor(metrics["train/itc"])) and torch.isfinite(torch.tensor(metrics["train/itm"]))
    assert json.loads((run / "pretrained.json").read_text())["checkpoint"].endswith("last.pt")
    out = tmp_path / "retrieval.json"
    assert main(base + ["evaluate", "--task", "retrieval", "--run", str(run), "--root", str(fixture_world), "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["k_test"] == params.evaluate.retrieval.k_test
    for key in ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10"):
        assert 0.0 <= result[key] <= 100.0 and 0.0 <= result["coarse"][key] <= 100.0 and 0.0 < result["chance"][key] <= 100.0
        assert result["chance"][key] <= result["fit_oracle"][key] <= 100.0  # the synthetic world says what is true of what
    assert "TR@1" in capsys.readouterr().out


def test_two_stage_with_every_candidate_equals_full_itm_ranking(fixture_world, fixture_pretraining_run, tmp_path) -> None:
    model, params, tokenizer = start_from(fixture_pretraining_run, load_params("fixture", params_dir=PARAMS_DIR), tmp_path, "retrieval")
    model.eval()
    data = karpathy_retrieval_set(DataLayout(fixture_world), "coco", "test")
    size, length = params.patch_labels.image_size, params.model.max_text_length
    everything = max(len(data.images), len(data.texts))
    result, _ = evaluate_retrieval(model, tokenizer, data, everything, size, length, progress=False)
    # brute force: ITM of every (image, text) pair, guided by that text
    images, _, states, masks, _ = encode_retrieval_set(model, tokenizer, data, size, length, progress=False)
    with torch.no_grad():
        full = torch.zeros(len(images), len(states))
        for i in range(len(images)):
            tokens = model.encode_image(images[i:i + 1].expand(len(states), -1, -1, -1), states[:, 0], use_detector=True)["tokens"]
            full[i] = model.itm_logits(model.fuse(tokens, states, masks)[1]).softmax(-1)[:, 1]
    expected = retrieval_recall(full, data.text_image)
    assert {k: result[k] for k in expected} == pytest.approx(expected)


def test_same_image_captions_are_not_itm_negatives(fixture_pretraining_run, tmp_path) -> None:
    model, params, _ = start_from(fixture_pretraining_run, load_params("fixture", params_dir=PARAMS_DIR), tmp_path, "retrieval")
    module = RetrievalFinetuning(model)
    size = params.patch_labels.image_size
    batch = {"images": torch.randn(3, 3, size, size), "input_ids": torch.tensor([[2, 10, 3]] * 3), "attention_mask": torch.ones(3, 3, dtype=torch.long),
             "image_ids": torch.tensor([7, 7, 7]), "seed": 0}
    out = module(batch)  # every sample shares one image: no negative exists, ITM sees the 3 positives only
    assert torch.isfinite(out["loss"]) and out["itm_examples"].item() == 3
    batch["image_ids"] = torch.tensor([7, 8, 9])
    assert module(batch)["itm_examples"].item() == 9  # 3 positives + a negative per image and per text
