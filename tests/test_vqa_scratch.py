"""The supervised-from-scratch VQA anchor (issue 23): the FiLM model on tiny tensors, its word list,
and `copa vqa-scratch` on the fixture world: a record with the VQA rows' fields, and a run killed
mid-way that resumes to the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import PARAMS_DIR, assert_states_equal, final_state, logged
from copa.cli import main
from copa.config import ParamsError, load_params
from copa.data.downstream import vqa_examples
from copa.data.layout import DataLayout
from copa.data.tokenizer import load_tokenizer, train_word_vocabulary
from copa.models.film import FiLMSpec, FiLMVQA, stem_strides
from copa.tasks.vqa import vqa_record

SPEC = FiLMSpec(vocab_size=20, answers=5, image_size=32, grid=8, channels=8, word_dim=8, gru_dim=8, blocks=2)


def _model() -> FiLMVQA:
    torch.manual_seed(0)
    return FiLMVQA(SPEC).eval()  # BatchNorm's running statistics: one question's logits do not depend on the batch


def test_logits_per_question_and_the_stem_strides() -> None:
    images, ids = torch.randn(2, 3, 32, 32), torch.randint(5, 20, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    model = _model()
    with torch.no_grad():
        grouped = model(images, ids, mask, torch.tensor([0, 1, 1]))
        one_each = model(images[[0, 1, 1]], ids, mask)
    assert grouped.shape == (3, 5)
    torch.testing.assert_close(grouped, one_each)  # an image asked twice goes through the stem once, to the same answer
    assert model.image_features(images).shape == (2, 8, 8, 8)  # 32 px -> the 8 x 8 grid
    assert stem_strides(128, 16) == (2, 2, 2, 1) and stem_strides(256, 16) == (2, 2, 2, 2) and stem_strides(16, 16) == (1, 1, 1, 1)
    for size, grid in ((128, 24), (128, 4), (96, 16)):  # not a power of two, more than four halvings, 6 = not one
        with pytest.raises(ValueError, match="image_size / grid must be one of 1, 2, 4, 8, 16"):
            stem_strides(size, grid)


def test_film_conditions_the_image_on_the_question_and_ignores_the_padding() -> None:
    model = _model()
    image = torch.randn(1, 3, 32, 32)
    questions = torch.tensor([[2, 7, 8, 9, 3, 0, 0], [2, 11, 12, 9, 3, 0, 0], [2, 7, 8, 9, 3, 0, 0]])
    mask = (questions != 0).long()
    with torch.no_grad():
        logits = model(image, questions, mask, torch.zeros(3, dtype=torch.long))
        unpadded = model(image, questions[:1, :5], mask[:1, :5])
        # the question reaches the answer through the blocks' FiLM only: without modulation both questions answer alike
        for block in model.blocks:
            torch.nn.init.zeros_(block.film.weight)
        unmodulated = model(image, questions, mask, torch.zeros(3, dtype=torch.long))
    assert not torch.allclose(logits[0], logits[1])  # same image, other question: other logits
    torch.testing.assert_close(logits[0], logits[2])
    torch.testing.assert_close(logits[:1], unpadded)  # the GRU's state after the last real token, not after the padding
    torch.testing.assert_close(unmodulated[0], unmodulated[1])


def test_word_list_keeps_whole_words_most_frequent_first(tmp_path: Path) -> None:
    vocab = train_word_vocabulary(["What color is the square?", "what shape is the star?"], tmp_path)
    words = vocab.read_text(encoding="utf-8").splitlines()
    assert words[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert words[5:] == ["?", "is", "the", "what", "color", "shape", "square", "star"]  # by count, then alphabetically
    assert load_tokenizer(vocab).tokenize("what color is the squares?") == ["what", "color", "is", "the", "[UNK]", "?"]


def test_a_grid_the_stem_cannot_reach_is_refused_naming_the_key() -> None:
    with pytest.raises(ParamsError, match=r"key 'vqa_scratch.grid' = 24: must be image size \(64 px\) / 1, 2, 4, 8 or 16"):
        load_params("fixture", ["vqa_scratch.grid=24"], params_dir=PARAMS_DIR)


# ------------------------------------------------------------------- copa vqa-scratch, fixture world
# pinned here: 4 steps, a checkpoint at step 2, so that a kill at step 3 loses a step
SETTINGS = ["vqa_scratch.epochs=1", "vqa_scratch.steps_per_epoch=4", "vqa_scratch.checkpoint_every=2"]


def scratch_args(root: Path, run: Path, result: Path) -> list[str]:
    sets = [arg for s in SETTINGS for arg in ("--set", s)]
    return ["--profile", "fixture", "--params-dir", str(PARAMS_DIR), *sets, "vqa-scratch", "--root", str(root), "--out", str(run),
            "--json", str(result), "--quiet"]


@pytest.fixture(scope="module")
def scratch_run(fixture_world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted anchor run and its evaluation (in-process). Read-only for the tests."""
    folder = tmp_path_factory.mktemp("vqa_scratch")
    assert main(scratch_args(fixture_world, folder / "run", folder / "run.json")) == 0
    return folder


def test_the_record_has_the_vqa_rows_fields(scratch_run: Path, fixture_world: Path) -> None:
    record = json.loads((scratch_run / "run.json").read_text())
    predictions = json.loads((scratch_run / "run_predictions.json").read_text())
    params = load_params("fixture", SETTINGS, params_dir=PARAMS_DIR)
    layout = DataLayout(fixture_world)
    train = vqa_examples(layout, params.finetune.vqa.train_splits[0])
    test = vqa_examples(layout, params.evaluate.vqa.split)
    fields = vqa_record(lambda questions: {q.question_id: "yes" for q in questions}, train, test, "val2014", 64, "any", True)[0]
    assert set(fields) | {"task", "run", "profile", "step", "epoch"} <= set(record)  # what `copa evaluate --task vqa` writes
    assert (record["task"], record["model"], record["inference"], record["step"]) == ("vqa", "vqa_scratch", "classifier", 4)
    assert record["image_size"] == params.patch_labels.image_size and record["questions"] == len(test) == len(predictions)
    assert 0.0 <= record["overall"] <= 100.0 and 0.0 <= record["controls"]["swapped_image"]["overall"] <= 100.0
    assert record["parameters"] == sum(p.numel() for p in FiLMVQA(FiLMSpec(
        vocab_size=len((scratch_run / "run" / "vocab" / "vocab.txt").read_text().splitlines()),
        answers=len(json.loads((scratch_run / "run" / "answers.json").read_text())), image_size=64)).parameters())
    metrics = json.loads((scratch_run / "run" / "metrics.json").read_text())
    assert torch.isfinite(torch.tensor(metrics["train/loss"])) and metrics["train/questions_per_image"] > 1  # images grouped


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_uninterrupted_runs_weights(scratch_run: Path, fixture_world: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process: the engine's kill hook (COPA_KILL_AT_STEP) raises instead of SIGKILL, after step 3 and
    its checkpointing, and the next call resumes. The engine's tests kill a real process
    (tests/test_engine.py); here what the task adds is checked: its seeded model, its image draws."""
    run = tmp_path / "run"

    def kill(pid, sig):
        raise Killed

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setenv("COPA_KILL_AT_STEP", "3")
    with pytest.raises(Killed):
        main(scratch_args(fixture_world, run, tmp_path / "run.json"))
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (2, 0, 2) and not (run / "metrics.json").exists()
    monkeypatch.delenv("COPA_KILL_AT_STEP")

    assert main(scratch_args(fixture_world, run, tmp_path / "run.json")) == 0
    assert_states_equal(final_state(run), final_state(scratch_run / "run"))  # BatchNorm's running statistics too
    assert any(not torch.equal(v, ckpt["model"][k]) for k, v in final_state(run).items())  # steps 3 and 4 did train
    assert logged(run) == logged(scratch_run / "run")
    resumed, uninterrupted = ({k: v for k, v in json.loads(p.read_text()).items() if k != "run"}
                              for p in (tmp_path / "run.json", scratch_run / "run.json"))
    assert resumed == uninterrupted  # the same answers to every question


def test_evaluating_on_the_training_split_is_refused_before_training(fixture_world: Path, tmp_path: Path, capsys) -> None:
    args = scratch_args(fixture_world, tmp_path / "run", tmp_path / "run.json")
    assert main(args[:4] + ["--set", "evaluate.vqa.split=train2014"] + args[4:]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evaluate.vqa.split train2014 is one the run was fine-tuned on (train2014)" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
