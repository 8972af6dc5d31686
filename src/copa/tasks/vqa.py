"""VQA (COPA §4.2, after ALBEF / mPLUG): the question guides the TPD, the decoder writes the answer.

- Fine-tuning (:class:`VQAFinetuning`): each question's distinct human answers are decoder
  targets weighted by their share of the 10 human answers (ALBEF's answer weighting); loss =
  -(sum over answers of weight x answer log-likelihood), averaged over the questions.
- Inference (:func:`answer_questions`): beam search (``generate``), or ALBEF's ranking of a
  candidate list (``rank``): the most frequent training answers, the ``rank_k`` most likely by
  their first token kept, then scored whole.
- Metric: the official VQA accuracy (:mod:`copa.eval.vqa`), overall and per answer type, next to
  the majority-answer baselines (overall, per question type, per answer type) and
  (``evaluate.vqa.swapped_image_control``) the same model asked each question about the image of
  another question of its question type: accuracy that survives the swap comes from the question
  alone. The answers also in the official result format.

With ``finetune.vqa.selection`` oracle (issue 19's upper reference), the selector keeps the
patches of the boxes each question refers to (the synthetic world's ``referents.json``), at the
VQA resolution, in training and in answering; a question that refers to no box keeps none of its
own (its mask is all False). In the swapped-image control a question keeps the patches of its own
referents, which are not in the other image: the oracle answers from the patches the question
as asked is about, wherever they fall in that image.

With ``finetune.vqa.perception`` oracle (issue 23's perception bracket), the ViT is replaced by the
scene's perfect image tokens (copa.models.scene_tokens, from copa.data.scene_grid): the same fine-tune
and answers, the text encoder, fusion and decoder alone to learn; the swap control reads the other
image's scene grid.

Images are resized to ``finetune.vqa.image_size`` (COPA Table 5's sweep; by default the pretraining
resolution) without crops or flips: a crop can remove the object a question counts, a flip swaps
"left of" and "right of".
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from copa.config import Params, ParamsError, VQAEvalParams, vqa_image_size
from copa.data.downstream import VQAExample, referent_targets, vqa_examples
from copa.data.layout import DataLayout
from copa.data.pretrain_data import PairDataset
from copa.data.scene_grid import SceneGridPairs
from copa.data.tokenizer import missing_pieces
from copa.eval.vqa import official_result_file, vqa_accuracy
from copa.models.copa import CopaModel
from copa.tasks.base import FinetuneTask, extend_vocabulary, perceived_pairs, run_finetuning
from copa.tasks.generation import condition, decode_text, generate, sequence_log_probs, tokenize
from copa.tasks.vqa_probe import state_probes
from copa.train.finetune import FinetunedRun, start_from


class VQAFinetuning(nn.Module):
    def __init__(self, model: CopaModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """``batch``: images, input_ids / attention_mask (questions), answer_ids / answer_mask (one row
        per distinct answer), answer_question (each answer's question row) and answer_weight; with the
        oracle selector, targets (B, n), each question's target patches."""
        m = self.model
        cond = condition(m, batch["images"], batch["input_ids"], batch["attention_mask"], guided=True, targets=batch.get("targets"))
        logp = sequence_log_probs(m, cond.select(batch["answer_question"]), batch["answer_ids"], batch["answer_mask"])
        loss = -(batch["answer_weight"] * logp).sum() / batch["images"].shape[0]
        return {"loss": loss, "answers_per_question": torch.tensor(len(logp) / batch["images"].shape[0])}


def answer_targets(human_answers: Sequence[str]) -> list[tuple[str, float]]:
    """Distinct answers with their share of the human answers (ALBEF), most frequent first."""
    counts = Counter(human_answers)
    return [(answer, n / len(human_answers)) for answer, n in counts.most_common()]


def question_data(examples: Sequence[VQAExample], tokenizer, params: Params,
                  layout: DataLayout | None = None) -> PairDataset | SceneGridPairs:
    """The model's (image, question) inputs (copa.tasks.base.perceived_pairs: with ``model.perception``
    oracle the scene grids of ``layout``'s synthetic world)."""
    # at another resolution than the pretraining's, the ViT resamples its position embeddings (copa.models.vit)
    return perceived_pairs([e.image for e in examples], [e.question for e in examples], tokenizer, params, "vqa", layout,
                        vqa_image_size(params))


def oracle_targets(model: CopaModel, params: Params, layout: DataLayout, examples: Sequence[VQAExample]) -> dict[int, Tensor] | None:
    """question id -> the patches (n,) the question refers to at the VQA resolution, for a model
    that selects with the oracle (None for any other selector)."""
    if model.spec.selection != "oracle":
        return None
    if not layout.referents.is_file():
        raise FileNotFoundError(f"{layout.referents}: not found; the oracle selector (model.selection.method / finetune.vqa.selection "
                                "oracle) keeps the patches of the boxes each question refers to, which only the synthetic world's "
                                "referents.json names")
    labels = params.patch_labels
    masks = referent_targets(layout, examples, vqa_image_size(params), labels.patch_size, labels.min_overlap)
    without = int((~masks.any(dim=1)).sum())
    if without:
        print(f"vqa: {without} of {len(examples)} questions refer to no box: the oracle keeps none of their own patches")
    return {e.question_id: mask for e, mask in zip(examples, masks)}


def batch_targets(targets: Mapping[int, Tensor] | None, examples: Sequence[VQAExample]) -> Tensor | None:
    """(B, n) the target patches of ``examples`` (by question id), or None without targets."""
    return None if targets is None else torch.stack([targets[e.question_id] for e in examples])


class VQATask(FinetuneTask):
    name = "vqa"

    def __init__(self, params: Params, start_run: Path, data_root: Path, out_dir: Path):
        model, self.params, tokenizer = start_from(start_run, params, out_dir, self.name)
        layout = DataLayout(Path(data_root))
        self.examples = [e for split in self.settings.train_splits for e in vqa_examples(layout, split)]
        self.targets = oracle_targets(model, self.params, layout, self.examples)
        # answers the pretraining vocabulary cannot spell (the demo's lacks "0") would be [UNK]
        pieces = missing_pieces(tokenizer, {a for e in self.examples for a in e.answers})
        if pieces:
            print(f"vqa: {len(pieces)} character pieces added to the vocabulary for the answers: {' '.join(pieces[:20])}")
        model, self.tokenizer = extend_vocabulary(model, self.params, out_dir, pieces, self.params.seed)
        self.data = question_data(self.examples, self.tokenizer, self.params, layout)
        self.model = VQAFinetuning(model)

    @property
    def n_examples(self) -> int:
        return len(self.examples)

    def collate(self, indices, epoch: int) -> dict:
        batch = self.data.collate_fn([self.data[i] for i in indices])
        answers, rows, weights = [], [], []
        for row, i in enumerate(indices):
            for answer, weight in answer_targets(self.examples[i].answers):
                answers.append(answer)
                rows.append(row)
                weights.append(weight)
        answer_ids, answer_mask = tokenize(self.tokenizer, answers, self.params.model.max_text_length)
        targets = batch_targets(self.targets, [self.examples[i] for i in indices])
        return {"images": batch["image"], "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "answer_ids": answer_ids, "answer_mask": answer_mask, "answer_question": torch.tensor(rows),
                "answer_weight": torch.tensor(weights), **({} if targets is None else {"targets": targets})}


def run_vqa_finetuning(params: Params, start_run: Path, data_root: Path, out_dir: Path, resume: bool = True) -> dict:
    return run_finetuning(VQATask(params, start_run, data_root, out_dir), out_dir, resume)


# ------------------------------------------------------------------------------------ inference
def answer_list(examples: Sequence[VQAExample], size: int) -> list[str]:
    """The ``size`` most frequent human answers of the training questions (ALBEF's candidate list)."""
    counts = Counter(a for e in examples for a in e.answers)
    return [answer for answer, _ in counts.most_common(size)]


@torch.no_grad()
def rank_answers(model: CopaModel, cond, tokenizer, candidates: Sequence[str], k: int, max_length: int) -> list[str]:
    """ALBEF's ranking: keep the ``k`` candidates whose first token is most likely after BOS, then
    pick the one with the highest whole-answer log-likelihood."""
    cand_ids, cand_mask = tokenize(tokenizer, candidates, max_length)
    batch = cond.image.shape[0]
    bos = cand_ids[:1, :1].expand(batch, 1)
    first = model.decode(bos, torch.ones_like(bos), cond.image, cond.text, cond.text_mask)[:, -1].log_softmax(-1)  # (B, V)
    k = min(k, len(candidates))
    top = first[:, cand_ids[:, 1]].topk(k, dim=1).indices  # (B, k) candidate indices
    rows = torch.arange(batch).repeat_interleave(k)
    flat = top.reshape(-1)
    scores = sequence_log_probs(model, cond.select(rows), cand_ids[flat], cand_mask[flat]).view(batch, k)
    best = top.gather(1, scores.argmax(1, keepdim=True))[:, 0]
    return [candidates[int(i)] for i in best]


@torch.no_grad()
def answer_questions(model: CopaModel, tokenizer, examples: Sequence[VQAExample], params: Params, settings: VQAEvalParams,
                     candidates: Sequence[str] | None = None, batch_size: int = 64, progress: bool = True,
                     targets: Mapping[int, Tensor] | None = None, layout: DataLayout | None = None) -> dict[int, str]:
    """question id -> predicted answer; ``targets`` (``oracle_targets``): the oracle's patches by question id;
    ``layout``: the data root's, for a model with perception oracle (``question_data``)."""
    data = question_data(examples, tokenizer, params, layout)
    out: dict[int, str] = {}
    for start in tqdm(range(0, len(examples), batch_size), desc="VQA answers", disable=not progress):
        idx = range(start, min(start + batch_size, len(examples)))
        batch = data.collate_fn([data[i] for i in idx])
        cond = condition(model, batch["image"], batch["input_ids"], batch["attention_mask"], guided=True,
                         targets=batch_targets(targets, [examples[i] for i in idx]))
        if settings.inference == "rank":
            answers = rank_answers(model, cond, tokenizer, candidates, settings.rank_k, params.model.max_text_length)
        else:
            answers = [decode_text(tokenizer, seq) for seq in generate(model, cond, tokenizer, settings)]
        out.update((examples[i].question_id, a) for i, a in zip(idx, answers))
    return out


def swap_images(examples: Sequence[VQAExample]) -> list[VQAExample]:
    """Each question asked about another image of a question of its question type (the
    annotations' ``question_type``): a control of what the model answers when the image does not
    go with the question, while the question's form and its answer prior stay the same. Within a
    type, the questions sorted by image each take the image of the question half the type's list
    away: no question keeps its own image unless one image holds more than half of its type's
    questions (then as few keep it as can: the excess of that image over the others)."""
    by_type: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_type.setdefault(e.question_type, []).append(i)
    image_of = {}
    for indices in by_type.values():
        ordered = sorted(indices, key=lambda i: (str(examples[i].image), examples[i].question_id))
        half = len(ordered) // 2
        image_of.update((i, examples[ordered[(n + half) % len(ordered)]].image) for n, i in enumerate(ordered))
    return [dataclasses.replace(e, image=image_of[i]) for i, e in enumerate(examples)]


def _most_frequent_answer(examples: Sequence[VQAExample]) -> str:
    """The most frequent of the questions' most frequent human answers (first seen on ties)."""
    return Counter(e.top_answer for e in examples).most_common(1)[0][0]


def majority_baselines(train: Sequence[VQAExample], test: Sequence[VQAExample]) -> dict:
    """The trivial baselines: every question answered with the most frequent training answer, with
    the most frequent training answer of its question type (the annotations' ``question_type``,
    the question's first words: what a model can learn from the question's form alone), and (an
    oracle of the answer type) with the most frequent training answer of its answer type. A type
    the training questions lack gets the overall majority answer."""
    truth = {e.question_id: (e.answers, e.answer_type) for e in test}
    majority = _most_frequent_answer(train)
    out = {}
    for name, key in (("majority_answer", None), ("majority_per_question_type", "question_type"),
                      ("majority_per_answer_type", "answer_type")):
        groups: dict[str, list[VQAExample]] = {}
        for e in train if key else ():
            groups.setdefault(getattr(e, key), []).append(e)
        answers = {group: _most_frequent_answer(members) for group, members in groups.items()}
        guess = vqa_accuracy({e.question_id: answers.get(getattr(e, key), majority) if key else majority for e in test}, truth)
        out[name] = {**({"answers": answers} if key else {"answer": majority}), "overall": guess["overall"],
                     "per_answer_type": guess["per_answer_type"], "per_question_type": per_question_type(guess["per_question"], test)}
    return out


def per_question_type(per_question: Mapping[int, float], test: Sequence[VQAExample]) -> dict[str, float]:
    """Accuracy (points) per question type (the annotations' ``question_type``: "what shape is the", "how
    many"...) from each question's (0-1), over the questions that have one: where a model stops (issue 23:
    the demo's COPA answered shape questions at chance while colour ones rose)."""
    groups: dict[str, list[float]] = {}
    for e in test:
        if e.question_type:
            groups.setdefault(e.question_type, []).append(per_question[e.question_id])
    return {kind: 100 * sum(scores) / len(scores) for kind, scores in sorted(groups.items())}


def evaluate_vqa(run: FinetunedRun, settings: VQAEvalParams, data_root: Path, split: str,
                 batch_size: int = 64, progress: bool = True) -> tuple[dict, list[dict], str]:
    """(metrics record, answers in the official result format, a one-line summary)."""
    model, params, tokenizer = run.model, run.params, run.tokenizer
    train, test = vqa_splits(params, data_root, split)
    candidates = answer_list(train, settings.answer_list_size) if settings.inference == "rank" else None
    layout = DataLayout(Path(data_root))
    targets = oracle_targets(model, params, layout, test)  # by question id: a swapped question keeps its own

    def answer(examples: Sequence[VQAExample]) -> dict[int, str]:
        return answer_questions(model, tokenizer, examples, params, settings, candidates, batch_size, progress, targets, layout)

    instruments = None
    if settings.state_probe:
        questions = functools.partial(question_data, tokenizer=tokenizer, params=params, layout=layout)
        probe_targets = None if targets is None else {**oracle_targets(model, params, layout, train), **targets}
        instruments = {"state_probes": state_probes(model, questions, train, test, settings.state_probe, params.seed,
                                                    functools.partial(batch_targets, probe_targets))}
    record, results, summary = vqa_record(answer, train, test, split, vqa_image_size(params), settings.inference,
                                          settings.swapped_image_control, instruments)
    if params.model.perception != "encoder":  # a bracket's record says so, wherever its file is put
        summary = f"perception {params.model.perception} (the scene's image tokens): {summary}"
    return {"perception": params.model.perception, **record}, results, summary


def vqa_splits(params: Params, data_root: Path, split: str) -> tuple[list[VQAExample], list[VQAExample]]:
    """The questions a run was fine-tuned on and those of ``split``, which must be another split."""
    layout = DataLayout(Path(data_root))
    trained_on = params.finetune.vqa.train_splits
    if split in trained_on:
        raise ParamsError(f"evaluate.vqa.split {split} is one the run was fine-tuned on ({', '.join(trained_on)})")
    return [e for s in trained_on for e in vqa_examples(layout, s)], vqa_examples(layout, split)


def vqa_record(answer: Callable[[Sequence[VQAExample]], dict[int, str]], train: Sequence[VQAExample], test: Sequence[VQAExample],
               split: str, image_size: int, inference: str, swapped_image_control: bool,
               instruments: dict | None = None) -> tuple[dict, list[dict], str]:
    """``evaluate_vqa``'s outputs for any model, ``answer(questions) -> {question id: answer}``: the
    accuracy, the majority baselines, (``swapped_image_control``) the same questions asked about
    other images, and the model's ``instruments`` as given."""
    predictions = answer(test)
    truth = {e.question_id: (e.answers, e.answer_type) for e in test}
    accuracy = vqa_accuracy(predictions, truth)
    per_question = accuracy.pop("per_question")
    record = {"split": f"VQA v2 {split}", "image_size": image_size, "inference": inference, **accuracy,
              "per_question_type": per_question_type(per_question, test), "baselines": majority_baselines(train, test)}
    if swapped_image_control:
        swapped = answer(swap_images(test))
        control = vqa_accuracy(swapped, truth)
        record["controls"] = {"swapped_image": {"overall": control["overall"], "per_answer_type": control["per_answer_type"],
                                                "per_question_type": per_question_type(control["per_question"], test),
                                                "answers_changed": sum(swapped[q] != a for q, a in predictions.items()) / len(predictions)}}
    if instruments:
        record["instruments"] = instruments
    # last, after the summary numbers: each question's accuracy (0-1) by id, for paired comparisons of runs (copa.eval.paired)
    record["per_question"] = {str(qid): round(score, 6) for qid, score in sorted(per_question.items())}
    types = ", ".join(f"{t} {v:.1f}" for t, v in accuracy["per_answer_type"].items())
    summary = (f"VQA accuracy {accuracy['overall']:.2f} ({types}); majority answer "
               f"{record['baselines']['majority_answer']['overall']:.2f}, per question type "
               f"{record['baselines']['majority_per_question_type']['overall']:.2f}")
    if "controls" in record:
        summary += f"; with swapped images {record['controls']['swapped_image']['overall']:.2f}"
    return record, official_result_file(predictions), summary
