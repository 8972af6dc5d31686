"""Caption metrics through pycocoevalcap's scorers, called one by one (COCO caption protocol).

``COCOEvalCap.evaluate()`` runs SPICE, which fetches Stanford CoreNLP on first use and fails
offline (ENVIRONMENT.md); so the PTB tokenizer and the scorers are called here directly, in
COCOEvalCap's order and with its inputs, and SPICE only when its CoreNLP jars are in place.
Otherwise SPICE is reported as unavailable with the reason, never as 0. Scores are the
scorers' own (0-1; papers print them x100).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_unavailable_reason() -> str | None:
    """None when SPICE can run here, else why not."""
    import pycocoevalcap.spice.spice as spice_module

    lib = Path(spice_module.__file__).parent / "lib"
    missing = [jar for jar in SPICE_JARS if not (lib / jar).is_file()]
    if missing:
        return (f"SPICE needs Stanford CoreNLP 3.6.0 ({', '.join(missing)} missing in {lib}); pycocoevalcap "
                "downloads it on first use, which needs network access")
    return None


def caption_metrics(prediction_sets: Mapping[str, Mapping[int, str]], references: Mapping[int, Sequence[str]],
                    spice: Collection[str] = ()) -> dict[str, dict]:
    """name -> BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE for the sets named in ``spice``, when
    possible) of each named set of captions, one per image, against the images' reference
    captions. Every image must have a caption in each set and at least one reference. The scorers
    start once for all sets: METEOR's Java process takes seconds to load its tables."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    empty = [i for i, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"{len(empty)} images have no reference caption (first {empty[:5]})")
    for name, predictions in prediction_sets.items():
        missing = [i for i in references if i not in predictions]
        extra = [i for i in predictions if i not in references]
        if missing or extra:
            raise ValueError(f"{name}: predictions and references differ: {len(missing)} images without a caption (first {missing[:5]}), "
                             f"{len(extra)} captions of unknown images (first {extra[:5]})")
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    scorers = {"meteor": Meteor(), "rouge_l": Rouge(), "cider": Cider()}
    out = {}
    for name, predictions in prediction_sets.items():
        res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in references})
        scores: dict = {"images": len(references)}
        bleu, _ = Bleu(4).compute_score(gts, res)
        scores.update({f"bleu_{n}": float(score) for n, score in enumerate(bleu, start=1)})
        for metric, scorer in scorers.items():
            scores[metric] = float(scorer.compute_score(gts, res)[0])
        reason = spice_unavailable_reason() if name in spice else "not asked for"
        if reason is None:
            from pycocoevalcap.spice.spice import Spice
            scores["spice"] = float(Spice().compute_score(gts, res)[0])
        else:
            scores["spice"] = None
            scores["spice_unavailable"] = reason
        out[name] = scores
    return out
