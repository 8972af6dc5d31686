"""Held-out probes of pretraining checkpoints: what Algorithm 1 should teach, measured on the
Karpathy test images that pretraining never sees (copa.data.heldout).

- **ITC retrieval**: R@1/5/10 both ways between the split's images and captions. The image
  features are text-free (selection by image-[CLS] attention), as in the coarse stage of COPA's
  retrieval (Appendix E): text-guided features would need one image pass per (image, text).
- **Patch detection**: for each held-out box, the patches the run's selection keeps when the
  box's text ("This is a {label}.") guides it, against the box's patch labels (PTA's targets):
  precision, recall, accuracy, F1, next to what a random choice of as many patches scores
  (precision = the base rate of labelled patches, recall = the kept fraction). Also the TPD's
  ``score > 0.5`` reading and, for text-guided selectors, the image-[CLS]-attention selection
  of the same model at the same place (COPA "w/o PTA"'s detector) and a control: the selection
  guided by another sample's text, which is as good as with the right text when the selection
  ignores the text.
- **Score ranking**: the average precision of the TPD's scores for each box, with its text and
  with another box's text, next to chance and to what the annotations allow a text-free and a
  text-aware detector (copa.eval.patch_ranking): the kept-patch precision is capped by the
  keeping ratio, AP is not.
- **ITM accuracy** (copa.eval.itm_accuracy), the **same-image contrast** of the TPD's scores
  under two texts of one image (copa.eval.same_image_contrast), **linear probes** of the
  frozen ViT features (copa.eval.linear_probe) and the fusion's **word grounding**: MLM of a
  masked category / colour word with the caption's image against another's (copa.eval.word_grounding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from copa.data.heldout import HeldoutAttributes, HeldoutObjects, RetrievalSet
from copa.data.pretrain_data import ObjectDataset
from copa.eval.itm_accuracy import itm_accuracy
from copa.eval.linear_probe import linear_probes
from copa.eval.patch_ranking import annotation_references, average_precision
from copa.eval.retrieval import chance_recalls, encode_retrieval_set, retrieval_recall
from copa.eval.same_image_contrast import tpd_contrast
from copa.eval.target_recall import TargetQuestions, target_recall
from copa.eval.word_grounding import word_grounding
from copa.models.copa import CopaModel
from copa.models.objectives.pta import PatchCounts, detected_patches, kept_mask, mask_confusion, metrics_from_counts
from copa.train.pretrain import load_pretraining_checkpoint


def _batches(dataset, batch_size: int) -> Iterable[dict]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=dataset.collate_fn)


@torch.no_grad()
def itc_retrieval(model: CopaModel, tokenizer, data: RetrievalSet, image_size: int, max_length: int, batch_size: int = 64,
                  progress: bool = True) -> dict:
    """R@K (percent) of text-free image features against text features, with chance levels
    (the coarse stage of the retrieval task's evaluation, without its ITM re-ranking)."""
    _, image_feats, _, _, text_feats = encode_retrieval_set(model, tokenizer, data, image_size, max_length, batch_size, progress)
    return {"images": len(data.images), "texts": len(data.texts), "image_features": "text_free",
            **retrieval_recall(image_feats @ text_feats.t(), data.text_image), "chance": chance_recalls(len(data.images), len(data.texts))}


def _metrics(counts: PatchCounts) -> dict[str, float]:
    return {name: float(value) for name, value in metrics_from_counts(counts)._asdict().items()}


@torch.no_grad()
def patch_detection(model: CopaModel, tokenizer, objects: HeldoutObjects, image_size: int, patch_size: int, max_length: int,
                    min_overlap: float, labels: str, batch_size: int = 64, progress: bool = True) -> dict:
    """Selection quality on the held-out boxes (see the module docstring), each labelled by the
    run's PTA rule ``labels`` (pretrain.pta_labels); a note without selection."""
    dataset = ObjectDataset(objects.samples, tokenizer, image_size, patch_size, max_length, seed=0, min_overlap=min_overlap, train=False,
                            labels=labels, every_elem=True)
    if model.spec.selection == "none":
        return {"samples": len(dataset), "note": "no selection: every patch is kept"}
    zero = PatchCounts(*(torch.zeros((), dtype=torch.long) for _ in range(4)))
    totals: dict[str, PatchCounts] = {}
    positives = patches = kept_patches = 0
    all_labels, score_ap = [], {"text": [], "other_text": []}

    def add(name: str, counts: PatchCounts) -> None:
        totals[name] = PatchCounts(*(a + b for a, b in zip(totals.get(name, zero), counts)))

    for batch in tqdm(_batches(dataset, batch_size), desc="objects", disable=not progress):
        labels = batch["patch_labels"]  # (B, n)
        n = labels.shape[1]
        text_cls = model.encode_text(batch["input_ids"], batch["attention_mask"])[:, 0]
        out = model.encode_image(batch["image"], text_cls, use_detector=True, need_scores=True)
        kept = kept_mask(out["kept"], n)
        add("kept", mask_confusion(kept, labels))
        if model.text_guided:
            cls_kept = model.encode_image(batch["image"], None, use_detector=False)["kept"]
            add("cls_attention_kept", mask_confusion(kept_mask(cls_kept, n), labels))
            # control: each image guided by the next sample's text (another box; the same class
            # now and then). Equal to "kept" = the selection does not read the text.
            other = model.encode_image(batch["image"], text_cls.roll(1, dims=0), use_detector=True, need_scores=True)
            add("kept_other_text", mask_confusion(kept_mask(other["kept"], n), labels))
        if out["scores"] is not None:  # the TPD's
            add("score_above_0.5", mask_confusion(detected_patches(out["scores"]), labels))
            score_ap["text"].append(average_precision(out["scores"], labels))
            score_ap["other_text"].append(average_precision(other["scores"], labels))
        all_labels.append(labels)
        positives += int(labels.sum())
        patches += labels.numel()
        kept_patches += int(kept.sum())
    base_rate, keep_fraction = positives / patches, kept_patches / patches
    ranking = {}
    if score_ap["text"]:
        labels = torch.cat(all_labels)
        examples = [(objects.samples[i], objects.samples[i].elems[j]) for i, j in dataset.elem_pairs]
        references = annotation_references(labels, [str(obj.image) for obj, _ in examples], [elem.text for _, elem in examples])
        has_positive = labels.sum(1) > 0
        ranking = {"score_ap": {name: float(torch.cat(v)[has_positive].mean()) for name, v in score_ap.items()},
                   "ap_references": references}
    return {
        "samples": len(dataset), "records": objects.records, "dropped": objects.dropped,
        "selection": model.spec.selection, "base_rate": base_rate, "keep_fraction": keep_fraction,
        **{name: _metrics(counts) for name, counts in totals.items()},
        "chance_kept": {"precision": base_rate, "recall": keep_fraction},
        **ranking,
    }


def evaluate_checkpoints(checkpoints: list[Path], pairs: RetrievalSet, objects: HeldoutObjects, attributes: HeldoutAttributes,
                         word_classes: Mapping[str, Sequence[str]], batch_size: int = 64, progress: bool = True,
                         target_questions: TargetQuestions | None = None) -> list[dict]:
    """Every probe on every checkpoint, in the order given (``attributes``: the linear probes' labels;
    ``word_classes``: the words the grounding probe masks; ``target_questions``: target-patch recall,
    copa.eval.target_recall, where given)."""
    results = []
    for path in checkpoints:
        model, params, tokenizer, state = load_pretraining_checkpoint(path)
        m, size, length = model.model, params.patch_labels.image_size, params.model.max_text_length
        patch, overlap = params.patch_labels.patch_size, params.patch_labels.min_overlap
        results.append({
            "checkpoint": path.name, **state,
            "retrieval": itc_retrieval(m, tokenizer, pairs, size, length, batch_size, progress),
            "patch_detection": patch_detection(m, tokenizer, objects, size, patch, length, overlap, params.pretrain.pta_labels, batch_size, progress),
            "itm": itm_accuracy(m, tokenizer, pairs, size, length, params.pretrain.itm_guidance, bool(model.detector_on), batch_size,
                                params.seed, progress),
            "same_image_contrast": tpd_contrast(m, tokenizer, objects, size, patch, length, overlap, params.pretrain.pta_labels, batch_size,
                                                params.seed, progress),
            "linear_probes": linear_probes(m, tokenizer, objects, attributes, size, patch, length, batch_size, params.seed, progress),
            "word_grounding": word_grounding(m, tokenizer, pairs, word_classes, size, length, bool(model.detector_on),
                                             batch_size=batch_size, seed=params.seed, progress=progress),
            **({"target_recall": target_recall(m, tokenizer, target_questions, length, batch_size=batch_size, seed=params.seed,
                                               progress=progress)} if target_questions is not None else {}),
        })
    return results
