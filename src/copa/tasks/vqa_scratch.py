"""The supervised-from-scratch VQA anchor (issue 23): a FiLM model (copa.models.film) trained on the
VQA training questions alone, scored as the fine-tuned VQA rows are.

- **Data**: the questions of ``finetune.vqa.train_splits``, the same ones the VQA fine-tunes see,
  their images resized without a crop (``resized_pairs``) to ``vqa_scratch.image_size``. A step
  draws ``batch_size`` *images*, each with every training question about it (the issue's anchor:
  "a batch of 16 images"); an image goes through the stem once for all its questions. Images are
  drawn from a permutation seeded by (seed, epoch), as every fine-tuning draws its examples.
- **Vocabulary**: the run's own word list (``train_word_vocabulary`` of the training questions, kept
  in ``vocab/vocab.txt``), not a WordPiece vocabulary: the GRU reads words, as the FiLM paper's
  does, and a test word never seen in training is one [UNK]. The questions are cut at
  ``model.max_text_length`` tokens, as the other VQA rows' are.
- **Objective**: ViLT's classifier objective, as the single-stream VQA's (``answer_scores``,
  ``classifier_loss``): the ``vqa_scratch.answers`` most frequent training answers (kept in
  ``answers.json``), binary cross-entropy against each answer's soft score.
- **Optimiser**: AdamW at ``lr`` (with weight decay 0, Adam; no decay on biases and norms ever),
  linear warm-up, cosine decay to 0, through the engine (checkpoints, exact resume, DVCLive).
- **Evaluation**: the arg-max answer of each question of ``evaluate.vqa.split``, scored by
  ``vqa_record`` with the same majority baselines and swapped-image control as every VQA row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from copa.config import AFTER_TRAINING_SECTIONS, Params, VQAEvalParams, vqa_scratch_image_size
from copa.data.downstream import VQAExample
from copa.data.pretrain_data import PairDataset
from copa.data.tokenizer import load_tokenizer, train_word_vocabulary
from copa.models.film import FiLMSpec, FiLMVQA
from copa.tasks.base import FinetuneTask, resized_pairs
from copa.tasks.single_stream_vqa import ANSWERS_FILE, ClassifierVQARun, answer_scores, classifier_loss, classify, load_classifier_run
from copa.tasks.vqa import answer_list, vqa_record, vqa_splits
from copa.train.engine import EngineConfig, train
from copa.train.pretrain import VOCAB_DIR
from copa.train.schedule import is_no_decay, warmup_cosine_lambda

SECTION = "vqa_scratch"
# the top-level params the anchor's training reads none of: editing them does not block its resume
NOT_READ = ("architecture", "pretrain", "single_stream", *AFTER_TRAINING_SECTIONS)


def film_spec(params: Params, vocab_size: int, answers: int, pad_id: int) -> FiLMSpec:
    s = params.vqa_scratch
    return FiLMSpec(vocab_size=vocab_size, answers=answers, image_size=vqa_scratch_image_size(params), grid=s.grid,
                    channels=s.channels, word_dim=s.word_dim, gru_dim=s.gru_dim, blocks=s.blocks, pad_id=pad_id)


def build_model(params: Params, tokenizer, answers: int) -> FiLMVQA:
    """The anchor's model, its initialisation drawn with the params' seed."""
    with torch.random.fork_rng():
        torch.manual_seed(params.seed)
        return FiLMVQA(film_spec(params, len(tokenizer), answers, tokenizer.pad_token_id))


def question_images(examples: Sequence[VQAExample], tokenizer, params: Params) -> PairDataset:
    """Each question with its image at the anchor's resolution, resized without a crop."""
    return resized_pairs([e.image for e in examples], [e.question for e in examples], tokenizer, params, "vqa",
                         vqa_scratch_image_size(params))


class ScratchVQATraining(nn.Module):
    def __init__(self, model: FiLMVQA):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """``batch``: images (B, 3, S, S), input_ids / attention_mask (Q, L), image_index (Q,), targets (Q, A)."""
        logits = self.model(batch["images"], batch["input_ids"], batch["attention_mask"], batch["image_index"])
        per_image = torch.tensor(logits.shape[0] / batch["images"].shape[0])
        return {"loss": classifier_loss(logits, batch["targets"]), "questions_per_image": per_image}


class ScratchVQATask(FinetuneTask):
    """The engine's Task: ``FinetuneTask``'s seeded draws, over images, with the ``vqa_scratch`` settings."""

    name = SECTION

    def __init__(self, params: Params, data_root: Path, out_dir: Path):
        self.params = params
        # the VQA fine-tunes' training questions; the evaluation split must be another one (refused before any step)
        self.examples = vqa_splits(params, data_root, params.evaluate.vqa.split)[0]
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.answers = answer_list(self.examples, self.settings.answers)
        (out_dir / ANSWERS_FILE).write_text(json.dumps(self.answers, indent=0) + "\n", encoding="utf-8")
        self.index = {answer: i for i, answer in enumerate(self.answers)}
        tokenizer = load_tokenizer(train_word_vocabulary([e.question for e in self.examples], out_dir / VOCAB_DIR))
        self.data = question_images(self.examples, tokenizer, params)
        by_image: dict[Path, list[int]] = {}  # first-seen order: the questions' file order
        for i, e in enumerate(self.examples):
            by_image.setdefault(e.image, []).append(i)
        self.questions_of = list(by_image.values())  # per image, its questions
        self.model = ScratchVQATraining(build_model(params, tokenizer, len(self.answers)))

    @property
    def settings(self):
        return self.params.vqa_scratch

    @property
    def section(self) -> str:
        return SECTION

    @property
    def n_examples(self) -> int:
        return len(self.questions_of)  # images

    def collate(self, indices: Sequence[int], epoch: int) -> dict:
        """Images ``indices`` (read once each, through their first question) and all their questions."""
        rows = [q for i in indices for q in self.questions_of[i]]
        text = self.data.collate_fn([self.data.tokens(self.examples[q].question) for q in rows])
        return {"images": torch.stack([self.data[self.questions_of[i][0]]["image"] for i in indices]),
                "input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
                "image_index": torch.tensor([n for n, i in enumerate(indices) for _ in self.questions_of[i]]),
                "targets": answer_scores([self.examples[q] for q in rows], self.index)}

    def param_groups(self) -> list[dict]:
        s = self.settings
        named = list(self.model.named_parameters())
        return [{"name": "decay", "params": [p for n, p in named if not is_no_decay(n, p)], "lr": s.lr, "weight_decay": s.weight_decay},
                {"name": "no_decay", "params": [p for n, p in named if is_no_decay(n, p)], "lr": s.lr, "weight_decay": 0.0}]

    def describe_batch(self, batch: dict) -> str:
        return f"{batch['images'].shape[0]} images, {batch['input_ids'].shape[0]} questions"


def train_scratch_vqa(params: Params, data_root: Path, out_dir: Path, resume: bool = True) -> dict:
    """Train the anchor into ``out_dir`` (resuming from its last checkpoint) and return the last metrics."""
    task = ScratchVQATask(params, data_root, out_dir)
    s = params.vqa_scratch
    total = s.epochs * task.steps_per_epoch(int(os.environ.get("WORLD_SIZE", 1)))  # torchrun sets WORLD_SIZE
    config = EngineConfig(epochs=s.epochs, lr_lambda=warmup_cosine_lambda(s.lr, s.warmup_steps, total, 0.0),
                          checkpoint_every=s.checkpoint_every, seed=params.seed, resume_ignores=NOT_READ,
                          broadcast_buffers=True)  # BatchNorm's running statistics: rank 0's on every rank under DDP
    return train(task, config, out_dir, params.to_dict(), resume=resume)


def load_scratch_vqa(run_dir: Path) -> ClassifierVQARun:
    """An anchor run's last checkpoint, its parameters, word list and answer list."""
    return load_classifier_run(run_dir, build_model, "copa vqa-scratch", "FiLM model",
                               lambda state: {k.removeprefix("model."): v for k, v in state.items()})  # ScratchVQATraining's prefix


def classify_questions(run: ClassifierVQARun, examples: Sequence[VQAExample], batch_size: int = 64,
                       progress: bool = True) -> dict[int, str]:
    """question id -> the anchor's arg-max answer."""
    return classify(run, run.model, question_images(examples, run.tokenizer, run.params), examples, batch_size, progress)


def evaluate_scratch_vqa(run: ClassifierVQARun, settings: VQAEvalParams, data_root: Path, batch_size: int = 64,
                         progress: bool = True) -> tuple[dict, list[dict], str]:
    """(metrics record, answers in the official result format, a one-line summary) on
    ``settings.split``, as ``copa evaluate --task vqa`` writes them; ``inference`` is "classifier"."""
    train_questions, test = vqa_splits(run.params, data_root, settings.split)
    record, predictions, summary = vqa_record(lambda examples: classify_questions(run, examples, batch_size, progress),
                                              train_questions, test, settings.split, vqa_scratch_image_size(run.params),
                                              "classifier", settings.swapped_image_control)
    return {"parameters": sum(p.numel() for p in run.model.parameters()), **record}, predictions, summary
