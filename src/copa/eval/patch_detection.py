"""The TPD against reference patch labels of web pairs, per pretraining checkpoint (COPA
Appendix C.1, Figure 5: "the accuracy and recall of TPD's patch predictions" per epoch).

Each pair's caption guides the TPD (as a text guides it in pretraining); its reference labels are
the patches any of the pair's reference boxes overlaps (copa.data.reference_boxes). The paper
does not say what a detected patch is; both readings are measured:
- ``kept``: among the top-K of the TPD's scores at the run's keeping ratio (what the model keeps);
- ``score_above_0.5``: the TPD's score exceeds 0.5 (its binary reading, as PTA trains it).
Metrics are micro-averaged over every patch of the sample (copa.models.objectives). The change
since the first checkpoint and the margin over chance (as many patches detected at random) come
with standard errors from a bootstrap over pairs (the patches of one image are not independent),
each resample drawing the same pairs for both checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from copa.data.formats.reference_boxes import ReferencePair
from copa.models.objectives.pta import PatchCounts, detected_patches, kept_mask, mask_confusion, metrics_from_counts

if TYPE_CHECKING:
    from copa.data.reference_boxes import ReferencePairDataset

DEFINITIONS = {
    "kept": "a patch is detected when it is among the top-K of the TPD's scores, K = the run's keeping ratio x patches",
    "score_above_0.5": "a patch is detected when its TPD score exceeds 0.5",
}
BOOTSTRAP_RESAMPLES = 1000
METRICS = ("precision", "recall", "accuracy", "f1")


def pair_counts(detected: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(B, 4) int64: tp, fp, fn, tn of each row of a (B, N) detection against (B, N) labels."""
    return np.array([[int(c) for c in mask_confusion(d[None], l[None])] for d, l in zip(detected, labels)], dtype=np.int64).reshape(-1, 4)


def chance(base_rate, detected_fraction) -> dict:
    """Accuracy and recall of detecting ``detected_fraction`` of the patches at random, when
    ``base_rate`` of them are labelled 1 (numbers or arrays)."""
    return {"accuracy": detected_fraction * base_rate + (1 - detected_fraction) * (1 - base_rate), "recall": detected_fraction}


def statistics(totals: np.ndarray) -> dict:
    """From (..., 4) summed counts (``...``: e.g. bootstrap resamples): micro precision, recall,
    accuracy, F1, the base rate, the detected fraction, and accuracy and recall over chance."""
    totals = np.asarray(totals, dtype=np.int64)
    metrics = metrics_from_counts(PatchCounts(*torch.from_numpy(totals).unbind(-1)))
    out = {name: v.numpy() for name, v in metrics._asdict().items()}
    patches = totals.sum(-1)
    out["base_rate"] = (totals[..., 0] + totals[..., 2]) / patches
    out["detected_fraction"] = (totals[..., 0] + totals[..., 1]) / patches
    for name, level in chance(out["base_rate"], out["detected_fraction"]).items():
        out[f"{name}_over_chance"] = out[name] - level
    return out


def bootstrap(first: np.ndarray, later: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """``later``'s accuracy and recall over chance, and each metric's change from ``first``
    ((P, 4) counts of the same pairs, two checkpoints), with standard errors over ``resamples``
    bootstrap draws of the pairs (the same draw for both checkpoints)."""
    weights = np.random.default_rng(seed).multinomial(len(first), np.full(len(first), 1 / len(first)), size=resamples)  # (R, P)
    then, now = statistics(first.sum(0)), statistics(later.sum(0))
    drawn_then, drawn_now = statistics(weights @ first), statistics(weights @ later)
    return {
        "since_first": {m: {"change": float(now[m] - then[m]), "se": float(np.std(drawn_now[m] - drawn_then[m], ddof=1))} for m in METRICS},
        "over_chance": {m: {"margin": float(now[f"{m}_over_chance"]), "se": float(np.std(drawn_now[f"{m}_over_chance"], ddof=1))}
                        for m in ("accuracy", "recall")},
    }


@torch.no_grad()
def checkpoint_counts(model, dataset: ReferencePairDataset, batch_size: int, progress: bool = True,
                      device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Per-pair (P, 4) counts of both readings of a TPD model's detections (the model on ``device``)."""
    counts: dict[str, list[np.ndarray]] = {name: [] for name in DEFINITIONS}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate_fn)
    for batch in tqdm(loader, desc="pairs", disable=not progress):
        labels = batch["patch_labels"]
        text_cls = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))[:, 0]
        out = model.encode_image(batch["image"].to(device), text_cls, use_detector=True, need_scores=True)
        counts["kept"].append(pair_counts(kept_mask(out["kept"], labels.shape[1]).cpu(), labels))
        counts["score_above_0.5"].append(pair_counts(detected_patches(out["scores"]).cpu(), labels))
    return {name: np.concatenate(parts) for name, parts in counts.items()}


def evaluate_reference_pairs(checkpoints: Sequence[Path], pairs: Sequence[ReferencePair], data_root: Path, batch_size: int = 64,
                             progress: bool = True, device: torch.device | str = "cpu") -> list[dict]:
    """Both readings on every checkpoint (in the order given), with each metric's change since the
    first checkpoint and their margins over chance."""
    # here, not at the top: they import transformers (seconds), which the metrics and Figure 5 do not need
    from copa.data.reference_boxes import ReferencePairDataset
    from copa.train.pretrain import load_pretraining_checkpoint

    results, first = [], None
    for path in checkpoints:
        wrapper, params, tokenizer, state = load_pretraining_checkpoint(path)
        model = wrapper.model.to(device)
        if model.spec.selection != "tpd":
            raise ValueError(f"{path}: selection {model.spec.selection!r}; Figure 5 evaluates the TPD (model.selection.method tpd)")
        labels = params.patch_labels
        dataset = ReferencePairDataset(pairs, data_root, tokenizer, labels.image_size, labels.patch_size, params.model.max_text_length,
                                       labels.min_overlap)
        counts = checkpoint_counts(model, dataset, batch_size, progress, device)
        if first is None:
            first = counts
        record = {"checkpoint": path.name, **state}
        for name, c in counts.items():
            totals = statistics(c.sum(0))
            record.setdefault("base_rate", float(totals["base_rate"]))
            record[name] = {m: float(totals[m]) for m in (*METRICS, "detected_fraction")}
            changes = bootstrap(first[name], c)
            record[f"{name}_since_first"], record[f"{name}_over_chance"] = changes["since_first"], changes["over_chance"]
        results.append(record)
    return results
