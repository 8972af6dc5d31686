"""Caption metrics through pycocoevalcap's scorers, called one by one (COCO caption protocol).

``COCOEvalCap.evaluate()`` runs SPICE, which fetches Stanford CoreNLP on first use and fails
offline (ENVIRONMENT.md); so the PTB tokenizer and the scorers are called here directly, in
COCOEvalCap's order and with its inputs, and SPICE only when its CoreNLP jars are in place.
Otherwise SPICE is reported as unavailable with the reason, never as 0. Scores are the
scorers' own (0-1; papers print them x100).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def caption_metrics(predictions: Mapping[int, str], references: Mapping[int, Sequence[str]], spice: bool = True) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when possible) of one caption per image
    against its reference captions. Every image must have a prediction and at least one reference."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    missing = [i for i in references if i not in predictions]
    extra = [i for i in predictions if i not in references]
    if missing or extra:
        raise ValueError(f"predictions and references differ: {len(missing)} images without a caption (first {missing[:5]}), "
                         f"{len(extra)} captions of unknown images (first {extra[:5]})")
    empty = [i for i, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"{len(empty)} images have no reference caption (first {empty[:5]})")
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in references})
    out: dict = {"images": len(references)}
    bleu, _ = Bleu(4).compute_score(gts, res)
    out.update({f"bleu_{n}": float(score) for n, score in enumerate(bleu, start=1)})
    for name, scorer in (("meteor", Meteor), ("rouge_l", Rouge), ("cider", Cider)):
        out[name] = float(scorer().compute_score(gts, res)[0])
    reason = spice_unavailable_reason() if spice else "not asked for"
    if reason is None:
        from pycocoevalcap.spice.spice import Spice
        out["spice"] = float(Spice().compute_score(gts, res)[0])
    else:
        out["spice"] = None
        out["spice_unavailable"] = reason
    return out
