"""The single-stream extension (COPA §4.7, Table 6): COPA-S equals ViLT with selection off, the TPD
inside the joint transformer, the pretraining step, VQA through the CLI, costs and grids."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from copa.cli import main
from copa.config import ParamsError, load_params
from copa.eval.efficiency import measure_efficiency
from copa.models.selectors import attention_half, cls_attention_scores
from copa.models.single_stream import SingleStreamModel, SingleStreamSpec, cls_attention_to
from copa.models.single_stream_pretraining import SingleStreamPretraining
from copa.models.text import additive_mask
from copa.report.grids import load_grid, row_run, run_name
from copa.tasks.single_stream_vqa import soft_score
from copa.train.build import single_stream_spec

PARAMS_DIR = Path(__file__).parents[1] / "params"
BASE = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR)]
SPEC = SingleStreamSpec(vocab_size=60, image_size=64, patch_size=16, dim=32, depth=4, heads=2, max_text_length=16,
                        selection="none", location=2, keep_ratio=1.0)


def _inputs(batch: int = 3, length: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 64, 64, generator=g)
    ids = torch.randint(5, 60, (batch, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 6:] = 0  # a shorter caption: padding masked
    return images, ids.masked_fill(mask == 0, 0), mask


def _pair(**copa_s) -> tuple[SingleStreamModel, SingleStreamModel]:
    """ViLT and a COPA-S holding ViLT's weights (its TPD's own start fresh)."""
    torch.manual_seed(0)
    vilt = SingleStreamModel(SPEC).eval()
    other = SingleStreamModel(dataclasses.replace(SPEC, selection="tpd", **copa_s)).eval()
    missing, unexpected = other.load_state_dict(vilt.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("vision.selector.") for k in missing)
    return vilt, other


@pytest.mark.parametrize("query", ["overall_cls", "overall_and_text_cls"])
@pytest.mark.parametrize("use_detector", [True, False])
def test_with_selection_off_copa_s_equals_vilt(query, use_detector):
    """Keeping 100% (the TPD present but dropping nothing): the same weights give the same outputs."""
    vilt, copa_s = _pair(keep_ratio=1.0, tpd_query=query)
    inputs = _inputs()
    with torch.no_grad():
        a, b = vilt(*inputs), copa_s(*inputs, use_detector=use_detector)
        assert torch.equal(a["states"], b["states"]) and torch.equal(a["kept"], b["kept"])
        assert torch.equal(vilt.itm_logits(a["states"]), copa_s.itm_logits(b["states"]))
        assert torch.equal(vilt.mlm_logits(a["states"], a["text_length"]), copa_s.mlm_logits(b["states"], b["text_length"]))
    assert a["scores"] is None and b["scores"].shape == (3, 16)  # the TPD still scores every patch (PTA)


def test_the_tpd_drops_image_tokens_never_text_tokens():
    _, copa_s = _pair(keep_ratio=0.5)
    images, ids, mask = _inputs()
    with torch.no_grad():
        out = copa_s(images, ids, mask)
        assert out["text_length"] == 10 and out["kept"].shape == (3, 8)
        assert out["states"].shape == (3, 10 + 1 + 8 + 1, 32)  # text, image [CLS], 8 of 16 patches, the fused token
        assert copa_s.mlm_logits(out["states"], out["text_length"]).shape == (3, 10, 60)
        # the kept patches are the top 8 by the TPD's scores, in spatial order
        top = out["scores"].topk(8, dim=1).indices.sort(dim=1).values
        assert torch.equal(out["kept"], top)
        # text-aware: another caption, other scores for the same image
        other = copa_s(images, ids.flip(1).masked_fill(mask == 0, 0), mask)["scores"]
        assert not torch.allclose(other, out["scores"])
        # PTA needs the layers up to the detector only
        assert torch.equal(copa_s(images, ids, mask, until_selection=True)["scores"], out["scores"])


def test_padding_is_masked():
    """More padding after a caption changes nothing it computes."""
    _, copa_s = _pair(keep_ratio=0.5)
    images, ids, mask = _inputs(length=10)
    longer_ids = torch.cat([ids, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        for use_detector in (True, False):
            a = copa_s(images, ids, mask, use_detector)
            b = copa_s(images, longer_ids, longer_mask, use_detector)
            assert torch.allclose(copa_s.pooled(a["states"]), copa_s.pooled(b["states"]), atol=1e-5)
            assert torch.allclose(a["scores"], b["scores"], atol=1e-5) and torch.equal(a["kept"], b["kept"])


def test_cls_attention_is_the_blocks_own_attention():
    """cls_attention_to: token 0's head-mean attention weights of the block, as the unfused
    computation of the dual-stream selectors gives them (no padding)."""
    torch.manual_seed(0)
    block = SingleStreamModel(SPEC).vision.blocks[1]
    x = torch.randn(2, 12, 32)
    with torch.no_grad():
        expected = cls_attention_scores(attention_half(block, x)[1])[:, 4:]  # columns from position 1: positions 5 on
        got = cls_attention_to(block, x, additive_mask(torch.ones(2, 12), x.dtype), 5)
    assert got.shape == (2, 7) and torch.allclose(got, expected, atol=1e-6)


def test_selectors_a_single_stream_model_takes():
    with pytest.raises(ValueError, match="selects with one of"):
        SingleStreamSpec(vocab_size=10, selection="text_attention")
    with pytest.raises(ValueError, match="one location"):
        SingleStreamSpec(vocab_size=10, selection="cls_attention", location=(4, 8))
    params = load_params("fixture", ["architecture=single_stream", "model.selection.method=text_attention"], params_dir=PARAMS_DIR)
    with pytest.raises(ParamsError, match="model.selection: a single-stream model selects with one of none, tpd, cls_attention"):
        single_stream_spec(params, 100)
    torch.manual_seed(0)
    model = SingleStreamModel(dataclasses.replace(SPEC, selection="cls_attention", keep_ratio=0.25)).eval()
    with torch.no_grad():
        out = model(*_inputs())
    assert out["scores"] is None and out["kept"].shape == (3, 4)  # "w/o PTA": no detector, selection by attention


def test_pretraining_step_and_warm_up(monkeypatch):
    from copa.models import single_stream_pretraining
    from copa.models.objectives.itm import itm_loss

    torch.manual_seed(0)
    step = SingleStreamPretraining(SingleStreamModel(dataclasses.replace(SPEC, selection="tpd", keep_ratio=0.5)), vocab_size=60,
                                   mask_id=4, special_ids=[0, 1, 2, 3, 4], switch_steps=2)
    images, ids, mask = _inputs(batch=4)
    objects = {"images": images[:2], "input_ids": ids[:2], "attention_mask": mask[:2], "patch_labels": (torch.rand(2, 16) > 0.5).float()}
    batch = {"pairs": {"images": images, "input_ids": ids, "attention_mask": mask, "image_ids": torch.arange(4)}, "objects": objects, "seed": 7}
    out = step(batch)
    assert set(out) >= {"loss", "itm", "mlm", "pta", "pta_recall"} and torch.isfinite(out["loss"])
    assert torch.allclose(out["loss"], out["itm"] + out["mlm"] + out["pta"])  # eq. 4: equal weights, no ITC / PrefixLM
    out["loss"].backward()
    assert step.model.vision.selector.mlp[0].weight.grad.abs().sum() > 0  # PTA trains the TPD in the warm-up
    step.after_step(0)
    assert not bool(step.detector_on)
    step.after_step(1)
    assert bool(step.detector_on)  # the TPD takes over after warm_up.steps
    step.eval()  # (dropout draws from the global RNG, which the engine seeds)
    assert torch.equal(step(batch)["loss"], step(batch)["loss"])  # the step's own draws come from its seed
    # ITM's image swaps: never the pair's own image when swapped; probability 0 / 1
    generator = torch.Generator().manual_seed(0)
    swapped = step.swap_images(64, generator)
    own = swapped == torch.arange(64)
    assert 10 < int(own.sum()) < 54
    step.itm_swap_probability = 0.0
    assert torch.equal(step.swap_images(8, generator), torch.arange(8))
    step.itm_swap_probability = 1.0
    assert not (step.swap_images(8, generator) == torch.arange(8)).any()
    # a swap to another pair's copy of the same image is a match: with one image, every label is 1
    labels = []
    monkeypatch.setattr(single_stream_pretraining, "itm_loss", lambda logits, y: labels.append(y) or itm_loss(logits, y))
    step({**batch, "pairs": {**batch["pairs"], "image_ids": torch.zeros(4, dtype=torch.long)}})
    step(batch)
    assert labels[0].tolist() == [1, 1, 1, 1] and labels[1].tolist() == [0, 0, 0, 0]
    # ViLT: no detector, no PTA term
    vilt = SingleStreamPretraining(SingleStreamModel(SPEC), vocab_size=60, mask_id=4, special_ids=[0, 1, 2, 3, 4])
    assert "pta" not in vilt(batch)


def test_vqa_soft_scores():
    assert [soft_score(c) for c in (1, 2, 3, 4, 10)] == pytest.approx([0.3, 0.6, 0.9, 1.0, 1.0])


def test_pretrain_vqa_and_evaluate_through_the_cli(fixture_world, fixture_pretraining_run, tmp_path, capsys):
    """COPA-S from the fixture world, 3 steps, then VQA with ViLT's classifier, through the same
    commands as the dual-stream runs."""
    run = tmp_path / "single-tpd"
    annotations = fixture_pretraining_run.parent / "annotations"
    single = BASE + ["--set", "architecture=single_stream", "--set", "pretrain.steps_per_epoch=3"]
    assert main(single + ["pretrain", "--root", str(fixture_world), "--annotations", str(annotations), "--out", str(run)]) == 0
    resolved = json.loads((run / "resolved_params.json").read_text())["params"]
    assert resolved["architecture"] == "single_stream" and json.loads((run / "metrics.json").read_text())["step"] == 3
    assert (run / "encoder_init" / "checkpoints" / "last.pt").is_file()  # the ViT starts from the contrastive stage's

    vqa = tmp_path / "vqa"
    assert main(BASE + ["finetune", "--task", "vqa", "--pretrained", str(run), "--root", str(fixture_world), "--out", str(vqa)]) == 0
    answers = json.loads((vqa / "answers.json").read_text())
    assert 1 < len(answers) <= load_params("fixture", params_dir=PARAMS_DIR).single_stream.vqa_answers
    out = tmp_path / "vqa.json"
    assert main(BASE + ["evaluate", "--task", "vqa", "--run", str(vqa), "--root", str(fixture_world), "--json", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    predictions = json.loads((tmp_path / "vqa_predictions.json").read_text())
    assert record["inference"] == "classifier" and record["questions"] == len(predictions) > 0
    assert {p["answer"] for p in predictions} <= set(answers) and 0.0 <= record["overall"] <= 100.0
    assert "swapped_image" in record["controls"] and "majority_answer" in record["baselines"]

    capsys.readouterr()
    refused = BASE + ["finetune", "--task", "captioning", "--pretrained", str(run), "--root", str(fixture_world), "--out", str(tmp_path / "c")]
    assert main(refused) == 2 and "is a single_stream run: it has no captioning head (it has: vqa)" in capsys.readouterr().err
    assert main(BASE + ["pretrain-eval", "--run", str(run), "--root", str(fixture_world)]) == 2
    assert "`copa pretrain-eval` reads runs of the architectures dual_stream only" in capsys.readouterr().err


def test_costs_of_the_single_stream_models():
    params = load_params("fixture", ["architecture=single_stream", "model.selection.keep_ratio=0.5"], params_dir=PARAMS_DIR)
    vilt = load_params("fixture", ["architecture=single_stream", "model.selection.method=none", "model.selection.keep_ratio=1.0"],
                       params_dir=PARAMS_DIR)
    copa_s = measure_efficiency(params, 100, params.efficiency, parts=("flops", "memory"))
    baseline = measure_efficiency(vilt, 100, vilt.efficiency, parts=("flops",))
    assert copa_s["model"]["architecture"] == "single_stream" and "single-stream" in copa_s["conventions"]["flops"]
    assert 0 < copa_s["flops"]["gmacs"]["total"] < baseline["flops"]["gmacs"]["total"]
    assert copa_s["training_memory"]["saved_bytes"] > 0 and copa_s["training_memory"]["step"].startswith("SingleStreamPretraining")


def test_table6_runs_are_named_by_architecture():
    params = load_params("demo", params_dir=PARAMS_DIR)
    grid = load_grid("table6")
    assert [row_run(r, params, 0) for r in grid.rows] == ["single-tpd-loc3-keep0.5-seed0", "single-none-loc3-keep1.0-seed0",
                                                           "tpd-loc3-keep0.5-seed0", "none-loc3-keep1.0-seed0"]
    assert run_name("tpd", [3], 0.5, 0, "dual_stream") == "tpd-loc3-keep0.5-seed0"


def test_a_single_stream_grid_row_cannot_use_trips_selection(tmp_path):
    grids = tmp_path / "grids"
    grids.mkdir()
    (tmp_path / "profiles").symlink_to(PARAMS_DIR / "profiles")
    (grids / "bad.yaml").write_text("title: t\ncolumns: [vqa]\nrows:\n  - {label: x, architecture: single_stream, method: text_attention, "
                                    "location: 6, keep: 0.7, paper: {}}\ntrained: {fixture: all, demo: all, paper: all}\n")
    with pytest.raises(ParamsError, match="text_attention"):
        load_grid("bad", tmp_path)
