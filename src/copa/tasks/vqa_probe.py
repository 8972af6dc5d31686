"""Where a VQA model's answers stop (issue 23): ridge probes of its question-conditioned states.

Per question type, a ridge classifier (copa.eval.ridge) maps a state of one
pass (copa.tasks.generation.condition) to the question's answer (its most frequent human answer):
fitted on up to ``per_type`` training questions of the type, tested on every evaluated question of
it. The states:

- ``question_only``: the text encoder's [CLS], which has not seen the image: the control, what the
  question alone tells;
- ``fused_text``: the fusion's text [CLS], the question after reading the image;
- ``fused_image``: the mean of the fusion's image tokens (the patches the selection kept).

Beside the model's own accuracy on the type: a fused state well above the control that the answers
do not reach says the decoder does not read what the fusion holds; fused states at the control say
the image does not reach the question (the encoder's linear probes, copa.eval.linear_probe, say
whether the patches hold it at all).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import torch

from copa.data.downstream import VQAExample
from copa.data.pretrain_data import PairDataset
from copa.data.scene_grid import SceneGridPairs
from copa.eval.ridge import ridge_probe
from copa.models.copa import CopaModel
from copa.tasks.generation import condition

STATES = ("question_only", "fused_text", "fused_image")


# the model's (image, question) inputs (copa.tasks.vqa.question_data)
Questions = Callable[[Sequence[VQAExample]], PairDataset | SceneGridPairs]
Targets = Callable[[Sequence[VQAExample]], "torch.Tensor | None"]  # the oracle selector's patches (copa.tasks.vqa.batch_targets)


@torch.no_grad()
def question_states(model: CopaModel, questions: Questions, examples: Sequence[VQAExample], targets: Targets,
                    batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Each of ``STATES`` (N, D) for ``examples``, in order, the question guiding the selection as in answering."""
    data = questions(examples)
    states: dict[str, list[torch.Tensor]] = defaultdict(list)
    for start in range(0, len(examples), batch_size):
        rows = range(start, min(start + batch_size, len(examples)))
        batch = data.collate_fn([data[i] for i in rows])
        states["question_only"].append(model.encode_text(batch["input_ids"], batch["attention_mask"])[:, 0])
        cond = condition(model, batch["image"], batch["input_ids"], batch["attention_mask"], guided=True,
                         targets=targets([examples[i] for i in rows]))
        states["fused_text"].append(cond.text[:, 0])
        states["fused_image"].append(cond.image[:, 1:].mean(1))
    return {name: torch.cat(states[name]).float() for name in STATES}


def state_probes(model: CopaModel, questions: Questions, train: Sequence[VQAExample], test: Sequence[VQAExample],
                 per_type: int, seed: int = 0, targets: Targets = lambda examples: None) -> dict[str, dict]:
    """question type -> {state: held-out accuracy (0-100)} with the majority answer's (``majority``) and the
    numbers of questions; types with fewer than two answers in their training questions are left out."""
    rng = np.random.default_rng(seed)
    by_type: dict[str, list[VQAExample]] = defaultdict(list)
    for example in train:
        by_type[example.question_type].append(example)
    fitted = [e for t in sorted(by_type) for e in (by_type[t] if len(by_type[t]) <= per_type else
                                                    [by_type[t][i] for i in sorted(rng.choice(len(by_type[t]), per_type, replace=False))])]
    tested = [e for e in test if e.question_type in by_type]
    fitted_states = question_states(model, questions, fitted, targets)
    tested_states = question_states(model, questions, tested, targets)
    out: dict[str, dict] = {}
    for question_type in sorted(by_type):
        rows = [i for i, e in enumerate(fitted) if e.question_type == question_type]
        held = [i for i, e in enumerate(tested) if e.question_type == question_type]
        labels = [fitted[i].top_answer for i in rows]
        if len(set(labels)) < 2 or not held:
            continue
        truth = [tested[i].top_answer for i in held]
        probes = {name: ridge_probe(fitted_states[name][rows], labels, tested_states[name][held], truth) for name in STATES}
        out[question_type] = {**{name: round(100 * probe["accuracy"], 2) for name, probe in probes.items()},
                              "majority": round(100 * probes["question_only"]["majority"], 2), "fitted": len(rows), "tested": len(held)}
    return out

