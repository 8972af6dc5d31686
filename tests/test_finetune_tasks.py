"""VQA and grounding fine-tuning and evaluation end to end on the fixture world, through the CLI;
and the pieces each relies on. (Captioning and its CIDEr optimisation: the fixture DAG's test in
test_workflow.py, which trains and evaluates both.)"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from copa.cli import main
from copa.config import load_params
from copa.data.downstream import grounding_examples, vqa_examples
from copa.data.layout import DataLayout
from copa.tasks.grounding import from_bins, to_bins, to_pixels_xywh
from copa.tasks.vqa import answer_targets, swap_images

PARAMS_DIR = Path(__file__).parents[1] / "params"
BASE = ["--profile", "fixture", "--params-dir", str(PARAMS_DIR)]


def _finetune_and_evaluate(task: str, start: Path, root: Path, folder: Path, *overrides: str) -> tuple[dict, object, dict]:
    run = folder / task
    settings = [arg for override in overrides for arg in ("--set", override)]
    assert main(BASE + settings + ["finetune", "--task", task, "--pretrained", str(start), "--root", str(root), "--out", str(run)]) == 0
    out = folder / f"{task}.json"
    assert main(BASE + ["evaluate", "--task", task, "--run", str(run), "--root", str(root), "--json", str(out), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    return json.loads(out.read_text()), json.loads((folder / f"{task}_predictions.json").read_text()), metrics


def test_vqa_end_to_end(fixture_world, fixture_pretraining_run, tmp_path) -> None:
    record, predictions, metrics = _finetune_and_evaluate("vqa", fixture_pretraining_run, fixture_world, tmp_path)
    params = load_params("fixture", params_dir=PARAMS_DIR)
    assert metrics["step"] == params.finetune.vqa.steps_per_epoch and torch.isfinite(torch.tensor(metrics["train/loss"]))
    questions = vqa_examples(DataLayout(fixture_world), params.evaluate.vqa.split)
    assert record["questions"] == len(questions) == len(predictions)
    assert {p["question_id"] for p in predictions} == {q.question_id for q in questions}  # the official result format
    assert all(isinstance(p["answer"], str) for p in predictions)
    assert 0.0 <= record["overall"] <= 100.0 and set(record["per_answer_type"]) <= {"yes/no", "number", "other"}
    assert 0.0 <= record["baselines"]["majority_answer"]["overall"] <= 100.0
    control = record["controls"]["swapped_image"]
    assert 0.0 <= control["overall"] <= 100.0 and 0.0 <= control["answers_changed"] <= 1.0
    assert record["image_size"] == params.patch_labels.image_size
    probes = record["instruments"]["state_probes"]  # evaluate.vqa.state_probe: per question type, held out
    assert probes and all(0 < p["fitted"] <= params.evaluate.vqa.state_probe and p["tested"] > 0 for p in probes.values())
    assert all(0.0 <= p[state] <= 100.0 for p in probes.values() for state in ("question_only", "fused_text", "fused_image", "majority"))


def test_vqa_at_another_resolution_than_the_pretraining(fixture_world, fixture_pretraining_run, tmp_path) -> None:
    """COPA Table 5: fine-tuned and evaluated at 96 px from a 64 px pretraining (the ViT resamples its
    position embeddings); the evaluation reads the resolution from the fine-tuned run."""
    record, predictions, _ = _finetune_and_evaluate("vqa", fixture_pretraining_run, fixture_world, tmp_path, "finetune.vqa.image_size=96")
    assert record["image_size"] == 96 and len(predictions) == record["questions"]
    params = load_params("fixture", ["finetune.vqa.image_size=96"], params_dir=PARAMS_DIR)
    from copa.data.tokenizer import load_tokenizer
    from copa.tasks.vqa import question_data

    tokenizer = load_tokenizer(tmp_path / "vqa" / "vocab" / "vocab.txt")
    questions = vqa_examples(DataLayout(fixture_world), "val2014")[:2]
    assert question_data(questions, tokenizer, params)[0]["image"].shape[-2:] == (96, 96)

    # COPA Figure 4 from this run: the top-K patches by TPD score at each ratio, over the 96 px image
    from copa.report.detected_patches import detect_patches, pick_questions
    from copa.train.finetune import load_finetuned

    run = load_finetuned(tmp_path / "vqa")
    picked = pick_questions(vqa_examples(DataLayout(fixture_world), "val2014"), 2)
    assert len({q.image for q in picked}) == 2
    detections = detect_patches(run, picked, [0.1, 0.5, 1.0], params.evaluate.vqa)
    for d in detections:  # 36 patches at 96 px: K = round(36 x ratio); nested, as top-K of one ranking are
        assert [int(d.kept[r].sum()) for r in (0.1, 0.5, 1.0)] == [4, 18, 36] and d.pixels.shape == (96, 96, 3)
        assert not (d.kept[0.1] & ~d.kept[0.5]).any()
    figure = tmp_path / "figure4"
    assert main(BASE + ["detected-patches", "--run", str(tmp_path / "vqa"), "--root", str(fixture_world), "--figure", str(figure),
                        "--questions", "2"]) == 0
    assert figure.with_suffix(".png").stat().st_size > 0 and figure.with_suffix(".pdf").stat().st_size > 0
    # the paired panel: each pair two questions of one image, about different objects (the world's referents.json)
    paired = json.loads(figure.with_suffix(".json").read_text())
    assert len(paired["pairs"]) == 2 and paired["ratio"] == params.model.selection.keep_ratio
    assert all(len(set(p["question_ids"])) == 2 and 0.0 <= p["iou"] <= 1.0 and p["kept"] == 18 for p in paired["pairs"])


def test_vqa_resolution_off_the_patch_grid_is_refused(fixture_world, fixture_pretraining_run, tmp_path, capsys) -> None:
    args = BASE + ["--set", "finetune.vqa.image_size=100", "finetune", "--task", "vqa", "--pretrained", str(fixture_pretraining_run),
                   "--root", str(fixture_world), "--out", str(tmp_path / "vqa")]
    assert main(args) == 2
    assert "--set: key 'finetune.vqa.image_size' = 100: must be a multiple of patch_labels.patch_size (16)" in capsys.readouterr().err


def test_swapped_images_go_with_other_questions(fixture_world) -> None:
    questions = vqa_examples(DataLayout(fixture_world), "val2014")
    swapped = swap_images(questions)
    assert [q.question_id for q in swapped] == [q.question_id for q in questions]
    assert sorted(q.image for q in swapped) == sorted(q.image for q in questions)  # the same images, reassigned
    assert sum(s.image != q.image for s, q in zip(swapped, questions)) >= 0.9 * len(questions)


def test_vqa_rank_inference_answers_from_the_list(fixture_world, fixture_pretraining_run, tmp_path) -> None:
    run = tmp_path / "vqa"
    assert main(BASE + ["finetune", "--task", "vqa", "--pretrained", str(fixture_pretraining_run), "--root", str(fixture_world), "--out", str(run)]) == 0
    out = tmp_path / "rank.json"
    ranked = BASE[:2] + ["--set", "evaluate.vqa.inference=rank", "--set", "evaluate.vqa.answer_list_size=5", "--set", "evaluate.vqa.rank_k=3"]
    assert main(ranked + ["--params-dir", str(PARAMS_DIR), "evaluate", "--task", "vqa", "--run", str(run), "--root", str(fixture_world),
                          "--json", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    answers = {p["answer"] for p in json.loads((tmp_path / "rank_predictions.json").read_text())}
    train = vqa_examples(DataLayout(fixture_world), "train2014")
    from copa.tasks.vqa import answer_list

    assert record["inference"] == "rank" and answers <= set(answer_list(train, 5))


def test_grounding_end_to_end(fixture_world, fixture_pretraining_run, tmp_path) -> None:
    record, predictions, _ = _finetune_and_evaluate("grounding", fixture_pretraining_run, fixture_world, tmp_path)
    params = load_params("fixture", params_dir=PARAMS_DIR)
    assert list(record["splits"]) == list(params.evaluate.grounding.splits)
    for split, result in record["splits"].items():
        assert result["expressions"] == len(grounding_examples(DataLayout(fixture_world), split))
        assert 0.0 <= result["acc@0.5"] <= 100.0
        for baseline in ("centre_box", "largest_box", "named_shape_box"):  # issue 19: the two annotated-box baselines
            assert 0.0 <= result["baselines"][baseline] <= 100.0 and 0.0 <= result["baselines"][f"{baseline}_mean_iou"] <= 1.0
        # the synthetic expressions name their shape and each image has 2+ of it: a random one is right often
        assert result["baselines"]["named_shape_box"] > 0.0
        assert set(result["centre_r"]) == {"x", "y"} and all(r is None or -1.0 <= r <= 1.0 for r in result["centre_r"].values())
        pointing = result["detector_pointing"]  # the fixture run's TPD, guided by each expression
        assert pointing["referred"] <= pointing["any_object"] <= 100.0 and 0.0 < pointing["chance"] < 100.0
        assert 0 < pointing["another_expression_n"] <= result["expressions"]
    assert len(predictions) == sum(r["expressions"] for r in record["splits"].values())
    vocab = (tmp_path / "grounding" / "vocab" / "vocab.txt").read_text().splitlines()
    assert vocab[-1] == f"[coord_{params.finetune.grounding.coordinate_bins - 1}]"


def test_answer_targets_weigh_distinct_answers_by_their_share() -> None:
    targets = answer_targets(["yes"] * 7 + ["no"] * 2 + ["maybe"])
    assert targets == [("yes", 0.7), ("no", 0.2), ("maybe", 0.1)]


@pytest.mark.parametrize("bins", [1, 7, 32])
def test_coordinate_bins_round_trip_within_half_a_bin(bins: int) -> None:
    xyxy = torch.rand(50, 4, generator=torch.Generator().manual_seed(bins))
    xyxy[0] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # the image border stays in range
    back = from_bins(to_bins(xyxy, bins), bins)
    assert to_bins(xyxy, bins).min() >= 0 and to_bins(xyxy, bins).max() < bins
    assert (back - xyxy.double()).abs().max() <= 0.5 / bins + 1e-9


def test_relative_boxes_to_pixels() -> None:
    box = to_pixels_xywh(torch.tensor([[0.25, 0.5, 0.75, 1.0]]), torch.tensor([[200, 100]]))
    assert box.tolist() == [[50.0, 50.0, 100.0, 50.0]]


def test_missing_vqa_split_names_the_file(tmp_path) -> None:
    from copa.data.formats.records import FormatError

    with pytest.raises(FormatError, match="val2014"):
        vqa_examples(DataLayout(tmp_path), "val2014")


def test_missing_pieces_make_every_answer_encodable(tmp_path) -> None:
    from copa.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, missing_pieces

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in [*SPECIAL_TOKENS, "1", "y", "##e", "##s", "##0"]))
    tokenizer = load_tokenizer(vocab)
    answers = ["0", "10", "Yes", "yes!"]
    assert "[UNK]" in tokenizer.tokenize(" ".join(answers))
    pieces = missing_pieces(tokenizer, answers)
    assert pieces == ["0", "!"]  # "10" and "yes" are spelt already
    vocab.write_text(vocab.read_text() + "".join(p + "\n" for p in pieces))
    grown = load_tokenizer(vocab)
    assert "[UNK]" not in grown.tokenize(" ".join(answers)) and missing_pieces(grown, answers) == []


def test_grounding_with_the_box_regression_head(fixture_world, fixture_pretraining_run, tmp_path) -> None:
    run, out = tmp_path / "grounding", tmp_path / "grounding.json"
    regression = BASE + ["--set", "finetune.grounding.head=regression"]
    assert main(regression + ["finetune", "--task", "grounding", "--pretrained", str(fixture_pretraining_run), "--root", str(fixture_world),
                              "--out", str(run)]) == 0
    assert main(BASE + ["evaluate", "--task", "grounding", "--run", str(run), "--root", str(fixture_world), "--json", str(out), "--quiet"]) == 0
    record = json.loads(out.read_text())
    assert record["head"] == "regression" and all(0.0 <= r["mean_iou"] <= 1.0 for r in record["splits"].values())
    assert "[coord_0]" not in (run / "vocab" / "vocab.txt").read_text()  # no coordinate tokens without the token head


def test_box_regression_loss_is_zero_only_for_the_right_box() -> None:
    from copa.tasks.grounding import box_regression_loss

    target = torch.tensor([[0.1, 0.2, 0.5, 0.6]])
    assert box_regression_loss(torch.tensor([[0.3, 0.4, 0.4, 0.4]]), target).item() == pytest.approx(0.0, abs=1e-6)
    assert box_regression_loss(torch.tensor([[0.5, 0.5, 0.4, 0.4]]), target).item() > 0.1


def test_grounding_keep_ratio_and_pta_weight(fixture_world, fixture_pretraining_run, tmp_path) -> None:
    """Issue 23's two departures from the paper's grounding fine-tune: the selection keeps the share
    given (training and evaluation build the same model), and PTA's loss on the referred box joins the
    box's loss (logged as train/pta)."""
    from copa.train.finetune import load_finetuned

    record, _, metrics = _finetune_and_evaluate("grounding", fixture_pretraining_run, fixture_world, tmp_path,
                                                "finetune.grounding.keep_ratio=0.25", "finetune.grounding.pta_weight=1.0")
    finetuned = load_finetuned(tmp_path / "grounding")
    assert finetuned.model.spec.keep_ratio == finetuned.params.model.selection.keep_ratio == 0.25
    assert load_params("fixture", params_dir=PARAMS_DIR).model.selection.keep_ratio != 0.25  # not the pretraining run's
    assert 0.0 < metrics["train/pta"] < metrics["train/loss"]
    assert (record["selection"], record["keep_ratio"], record["pta_weight"]) == ("tpd", 0.25, 1.0)  # the record says what ran
    assert all(0.0 <= r["acc@0.5"] <= 100.0 for r in record["splits"].values())


def test_grounding_departures_do_not_apply_without_a_selection(fixture_pretraining_run, tmp_path, monkeypatch, capsys) -> None:
    """A profile's keep ratio is for the runs that select, its PTA weight for those whose TPD does: a run that
    selects nothing (mPLUG's row), keeps every patch (w/o TPD's) or has perfect image tokens fine-tunes without
    them, with a line saying so, and its parameters record what applied."""
    from copa.train import finetune

    departures = ["finetune.grounding.keep_ratio=0.25", "finetune.grounding.pta_weight=1.0"]
    oracle = load_params("fixture", [*departures, "finetune.grounding.perception=oracle"], params_dir=PARAMS_DIR)
    _, params, _ = finetune.start_from(fixture_pretraining_run, oracle, tmp_path / "oracle", "grounding")
    assert (params.finetune.grounding.keep_ratio, params.finetune.grounding.pta_weight) == (None, 0.0)
    err = capsys.readouterr().err
    assert "finetune.grounding.keep_ratio 0.25 does not apply to" in err and "perception oracle" in err
    assert "finetune.grounding.pta_weight 1.0 does not apply to" in err

    everything = load_params("fixture", ["finetune.grounding.keep_ratio=1.0", "finetune.grounding.pta_weight=1.0"], params_dir=PARAMS_DIR)
    model, params, _ = finetune.start_from(fixture_pretraining_run, everything, tmp_path / "all", "grounding")
    assert model.spec.keep_ratio == params.finetune.grounding.keep_ratio == 1.0 and params.finetune.grounding.pta_weight == 0.0
    assert "pta_weight 1.0 does not apply" in capsys.readouterr().err  # a TPD keeping every patch scores none

    loaded = finetune.load_pretraining_checkpoint

    for method, keep in (("none", None), ("tpd", 1.0)):  # mPLUG's row; w/o TPD's (PTA, every patch kept)
        def selecting_nothing(path, method=method, keep=keep):
            model, params, tokenizer, state = loaded(path)
            selection = dataclasses.replace(params.model.selection, method=method, keep_ratio=keep or params.model.selection.keep_ratio)
            return model, dataclasses.replace(params, model=dataclasses.replace(params.model, selection=selection)), tokenizer, state

        monkeypatch.setattr(finetune, "load_pretraining_checkpoint", selecting_nothing)
        run_keep = selecting_nothing(finetune.run_checkpoints(fixture_pretraining_run, "last")[0])[1].model.selection.keep_ratio
        model, params, _ = finetune.start_from(fixture_pretraining_run, load_params("fixture", departures, params_dir=PARAMS_DIR),
                                               tmp_path / method, "grounding")
        assert (params.finetune.grounding.keep_ratio, params.finetune.grounding.pta_weight) == (None, 0.0)
        assert params.model.selection.keep_ratio == run_keep
        assert f"(selection {method} keeping {run_keep:.0%}" in capsys.readouterr().err


def test_referred_patches_follow_the_pretraining_rule() -> None:
    from copa.data.patch_labels import rasterise
    from copa.tasks.grounding import referred_patches

    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.25], [0.55, 0.6, 0.7, 0.65]])  # relative x1 y1 x2 y2 on a 4 x 4 grid of 16 px
    labels = referred_patches(boxes, 4, 16, 0.0)
    assert labels.shape == (2, 16) and labels.dtype == torch.float32
    assert labels[0].nonzero().squeeze(1).tolist() == [0, 1]  # rows 0, columns 0-1
    assert labels[1].nonzero().squeeze(1).tolist() == [10]  # (35.2, 38.4)-(44.8, 41.6) px: row 2, column 2
    xywh = (boxes * 64).numpy()
    xywh[:, 2:] -= xywh[:, :2]
    assert torch.equal(referred_patches(boxes, 4, 16, 0.5), torch.from_numpy(rasterise(xywh, 64, 16, 0.5).reshape(2, -1)).float())
