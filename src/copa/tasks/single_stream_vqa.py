"""VQA of the single-stream models (COPA Table 6): ViLT's classifier over an answer vocabulary.

A single-stream model has no decoder to write answers (COPA and mPLUG generate them), and COPA-S is
built on ViLT, whose VQA head is used here: an MLP (Linear D -> 2D, LayerNorm, GELU, Linear 2D -> A)
on the pooled output, over the A = ``single_stream.vqa_answers`` most frequent training answers
(ViLT: 3,129), trained with binary cross-entropy against each answer's VQA soft score
min(1, 0.3 x its count among the 10 human answers), summed over the answers as ViLT does (the mean
times A). The question guides the selection. The answer is the arg-max class; the metric, the
majority baselines and the swapped-image control are the dual-stream VQA's (``copa.tasks.vqa``), so
Table 6's rows are scored alike. The answer vocabulary is kept with the run (``answers.json``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from copa.config import Params, VQAEvalParams, params_from_dict, vqa_image_size
from copa.data.downstream import VQAExample, vqa_examples
from copa.data.formats.records import load_json
from copa.data.layout import DataLayout
from copa.data.pretrain_data import PairDataset
from copa.data.tokenizer import load_tokenizer
from copa.models.single_stream import SingleStreamModel
from copa.models.text import bert_init
from copa.models.weights import load_tensors
from copa.tasks.base import FinetuneTask, run_finetuning
from copa.tasks.vqa import answer_list, question_data, vqa_record, vqa_splits
from copa.train.build import single_stream_spec
from copa.train.finetune import CheckpointMismatch, start_from
from copa.train.pretrain import VOCAB_DIR, run_checkpoints

ANSWERS_FILE = "answers.json"


def soft_score(count: int) -> float:
    """The VQA soft score of an answer given by ``count`` of the 10 humans."""
    return min(1.0, 0.3 * count)


def answer_scores(examples: Sequence[VQAExample], index: dict[str, int]) -> Tensor:
    """(B, A) the classifier's targets: each answer's soft score among the question's human answers;
    an answer outside the vocabulary ``index`` cannot be predicted (ViLT drops it too)."""
    targets = torch.zeros(len(examples), len(index))
    for row, example in enumerate(examples):
        for answer, count in Counter(example.answers).items():
            if answer in index:
                targets[row, index[answer]] = soft_score(count)
    return targets


def classifier_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """ViLT's VQA loss: binary cross-entropy against the soft scores, summed over the answers (the mean times A)."""
    return F.binary_cross_entropy_with_logits(logits, targets) * logits.shape[1]


class VQAClassifier(nn.Module):
    def __init__(self, model: SingleStreamModel, answers: int):
        super().__init__()
        self.model = model
        d = model.spec.dim
        self.head = nn.Sequential(nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.GELU(), nn.Linear(2 * d, answers))
        self.head.apply(bert_init(model.spec.init_std))

    def logits(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, A) answer logits for the questions about ``images``."""
        return self.head(self.model.pooled(self.model(images, input_ids, attention_mask)["states"]))

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """``batch``: images, input_ids / attention_mask (questions), targets (B, A) soft scores."""
        logits = self.logits(batch["images"], batch["input_ids"], batch["attention_mask"])
        loss = classifier_loss(logits, batch["targets"])
        return {"loss": loss, "target_mass": batch["targets"].sum(1).mean()}


class SingleStreamVQATask(FinetuneTask):
    name = "vqa"

    def __init__(self, params: Params, start_run: Path, data_root: Path, out_dir: Path):
        model, self.params, self.tokenizer = start_from(start_run, params, out_dir, self.name)
        layout = DataLayout(Path(data_root))
        self.examples = [e for split in self.settings.train_splits for e in vqa_examples(layout, split)]
        self.answers = answer_list(self.examples, self.params.single_stream.vqa_answers)
        (Path(out_dir) / ANSWERS_FILE).write_text(json.dumps(self.answers, indent=0) + "\n", encoding="utf-8")
        self.index = {answer: i for i, answer in enumerate(self.answers)}
        self.data = question_data(self.examples, self.tokenizer, self.params)
        with torch.random.fork_rng():  # the head's initialisation, seeded
            torch.manual_seed(self.params.seed)
            self.model = VQAClassifier(model, len(self.answers))

    @property
    def n_examples(self) -> int:
        return len(self.examples)

    def collate(self, indices: Sequence[int], epoch: int) -> dict:
        batch = self.data.collate_fn([self.data[i] for i in indices])
        return {"images": batch["image"], "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "targets": answer_scores([self.examples[i] for i in indices], self.index)}


def run_vqa_finetuning(params: Params, start_run: Path, data_root: Path, out_dir: Path, resume: bool = True) -> dict:
    return run_finetuning(SingleStreamVQATask(params, start_run, data_root, out_dir), out_dir, resume)


class ClassifierVQARun(NamedTuple):
    """A VQA classifier run (single-stream, or the from-scratch anchor of copa.tasks.vqa_scratch), read once."""

    model: nn.Module  # eval mode: the single-stream VQAClassifier (answer logits: .logits) or the anchor's FiLMVQA (its forward)
    params: Params
    tokenizer: object
    state: dict  # where it stands: step, epoch
    answers: list[str]


def load_classifier_run(run_dir: Path, build: Callable[[Params, object, int], nn.Module], written_by: str, what: str,
                        model_state: Callable[[dict], dict] = lambda state: state) -> ClassifierVQARun:
    """A VQA classifier run's last checkpoint, its parameters, vocabulary and answer list:
    ``build(params, tokenizer, answers)`` makes the model that ``model_state(checkpoint's model)`` fills."""
    run_dir = Path(run_dir)
    checkpoint = run_checkpoints(run_dir, "last")[0]
    ckpt = load_tensors(checkpoint)
    params = params_from_dict(ckpt["resolved_params"], f"{checkpoint} (resolved_params)")
    tokenizer = load_tokenizer(run_dir / VOCAB_DIR / "vocab.txt")
    answers_file = run_dir / ANSWERS_FILE
    if not answers_file.is_file():
        raise FileNotFoundError(f"{answers_file}: the run's answer list is missing (written by {written_by})")
    answers = load_json(answers_file)
    model = build(params, tokenizer, len(answers))
    try:
        model.load_state_dict(model_state(ckpt["model"]))
    except RuntimeError as exc:
        raise CheckpointMismatch(checkpoint, f"does not fit the {what} its resolved_params describe: {exc}") from None
    return ClassifierVQARun(model.eval(), params, tokenizer, {"step": ckpt["step"], "epoch": ckpt["epoch"]}, answers)


def load_vqa_run(run_dir: Path) -> ClassifierVQARun:
    """A single-stream VQA run's last checkpoint, its parameters, vocabulary and answer list."""
    return load_classifier_run(
        run_dir, lambda params, tokenizer, answers: VQAClassifier(SingleStreamModel(single_stream_spec(params, len(tokenizer))), answers),
        "copa finetune --task vqa", "single-stream VQA model")


@torch.no_grad()
def classify(run: ClassifierVQARun, logits: Callable[[Tensor, Tensor, Tensor], Tensor], data: PairDataset,
             examples: Sequence[VQAExample], batch_size: int = 64, progress: bool = True) -> dict[int, str]:
    """question id -> the arg-max answer of ``logits(images, input_ids, attention_mask)`` over ``data``
    (one item per example, in order): either classifier run's answers."""
    out: dict[int, str] = {}
    for start in tqdm(range(0, len(examples), batch_size), desc="VQA answers", disable=not progress):
        idx = range(start, min(start + batch_size, len(examples)))
        batch = data.collate_fn([data[i] for i in idx])
        best = logits(batch["image"], batch["input_ids"], batch["attention_mask"]).argmax(dim=1)
        out.update((examples[i].question_id, run.answers[int(b)]) for i, b in zip(idx, best))
    return out


def classify_questions(run: ClassifierVQARun, examples: Sequence[VQAExample], batch_size: int = 64,
                       progress: bool = True) -> dict[int, str]:
    """question id -> the single-stream run's arg-max answer."""
    return classify(run, run.model.logits, question_data(examples, run.tokenizer, run.params), examples, batch_size, progress)


def evaluate_vqa(run: ClassifierVQARun, settings: VQAEvalParams, data_root: Path, split: str,
                 batch_size: int = 64, progress: bool = True) -> tuple[dict, list[dict], str]:
    """(metrics record, answers in the official result format, a one-line summary), as the
    dual-stream ``copa.tasks.vqa.evaluate_vqa`` writes them; ``inference`` is "classifier"."""
    train, test = vqa_splits(run.params, data_root, split)
    return vqa_record(lambda examples: classify_questions(run, examples, batch_size, progress), train, test, split,
                      vqa_image_size(run.params), "classifier", settings.swapped_image_control)
