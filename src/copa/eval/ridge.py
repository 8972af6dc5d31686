"""A linear probe's classifier: ridge regression onto one-hot classes, in closed form, on standardised
features (the encoder's linear probes, copa.eval.linear_probe; the VQA state probes, copa.tasks.vqa_probe)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

RIDGE = 1e-2  # the ridge penalty per training example, on standardised features


def ridge_probe(train_x: Tensor, train_y: Sequence[str], test_x: Tensor, test_y: Sequence[str]) -> dict:
    """Accuracy of a ridge classifier fitted on (train_x (N, D), train_y), tested on the rest, and
    the majority class's; a note when a half is empty or the training half has one class."""
    classes = sorted(set(train_y))
    if len(test_y) == 0 or len(classes) < 2:
        return {"train": len(train_y), "test": len(test_y), "note": "too few examples or classes to fit"}
    x = train_x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # a bias column
    index = {c: k for k, c in enumerate(classes)}
    targets = torch.nn.functional.one_hot(torch.tensor([index[y] for y in train_y]), len(classes)).double()
    penalty = RIDGE * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(x.t() @ x + penalty, x.t() @ targets)  # (D + 1, classes)
    t = (test_x.double() - mean) / std
    predicted = (torch.cat([t, torch.ones(len(t), 1, dtype=t.dtype)], 1) @ weights).argmax(1)
    accuracy = float(np.mean([classes[p] == y for p, y in zip(predicted.tolist(), test_y)]))
    majority = Counter(train_y).most_common(1)[0][0]
    return {"accuracy": accuracy, "majority": float(np.mean([y == majority for y in test_y])), "classes": len(classes),
            "train": len(train_y), "test": len(test_y)}
