"""COPA Figure 5 (Appendix C.1): the TPD's accuracy and recall per pretraining epoch, in domain
(held-out COCO boxes, copa.eval.pretraining) and out of domain (web pairs with reference boxes,
copa.eval.patch_detection), side by side, with the same numbers as a table.

The table (``results/<profile>/tables/figure5.csv``) has one row per epoch, ``epoch N``, and
columns ``<domain>_<reading>_<metric>``: domain ``id`` / ``ood``, reading ``kept`` (top-K at the
keeping ratio) / ``score`` (score > 0.5), metric accuracy / recall / precision / f1; ``<domain>_chance_*``
what keeping as many patches at random scores (the top-K reading's); ``ood_<reading>_<metric>_change``
/ ``_change_se`` the change since the first epoch and ``_over_chance`` / ``_over_chance_se`` the
margin over chance, with bootstrap standard errors (the claims check reads them).
The paper's epoch-30 numbers are a separate, labelled reference row.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from copa.data.formats.records import FormatError, load_json
from copa.data.formats.reference_boxes import ORACLE_SOURCE
from copa.eval.patch_detection import DEFINITIONS, chance
from copa.report.figures import new_figure, save_figure
from copa.report.tables import latex_table, markdown_table

PAPER = {"epoch": 30, "accuracy": 0.87, "recall": 0.74}  # "By the 30th epoch, TPD's accuracy reaches 0.87, and its recall approaches 0.74"
PAPER_ROW = "paper, epoch 30 (reference)"
READINGS = {"kept": "kept", "score_above_0.5": "score"}  # result key -> column name
METRICS = ("accuracy", "recall", "precision", "f1")
CHANGES = ("accuracy", "recall")


def _read(path: Path) -> dict:
    """A result of `copa pretrain-eval` or `copa patch-detection`: its probes, per checkpoint."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run the workflow's earlier stage first)")
    result = load_json(path)
    if not isinstance(result, dict) or not isinstance(result.get("checkpoints"), list):
        raise FormatError(path, "no 'checkpoints' list: not a result of `copa pretrain-eval` or `copa patch-detection`")
    return result


def figure5_frame(in_domain: dict, out_of_domain: dict) -> pd.DataFrame:
    """The table's rows from the two result files (``copa pretrain-eval`` and ``copa patch-detection``
    of the same run), matched by checkpoint."""
    held_out = {c["checkpoint"]: c for c in in_domain["checkpoints"]}
    rows = []
    for ood in out_of_domain["checkpoints"]:
        if ood["checkpoint"] not in held_out:
            raise ValueError(f"checkpoint {ood['checkpoint']} of the out-of-domain results has no held-out probe "
                             f"(in-domain checkpoints: {', '.join(held_out)})")
        ind = held_out[ood["checkpoint"]]["patch_detection"]
        row = {"row": f"epoch {ood['epoch']}", "epoch": ood["epoch"], "step": ood["step"]}
        for prefix, record, kept in (("id", ind, ind["keep_fraction"]), ("ood", ood, ood["kept"]["detected_fraction"])):
            for key, name in READINGS.items():
                row.update({f"{prefix}_{name}_{m}": record[key][m] for m in METRICS})
            row.update({f"{prefix}_chance_{m}": v for m, v in chance(record["base_rate"], kept).items()})
        for key, name in READINGS.items():
            for m in CHANGES:
                change, margin = ood[f"{key}_since_first"][m], ood[f"{key}_over_chance"][m]
                row.update({f"ood_{name}_{m}_change": change["change"], f"ood_{name}_{m}_change_se": change["se"],
                            f"ood_{name}_{m}_over_chance": margin["margin"], f"ood_{name}_{m}_over_chance_se": margin["se"]})
        rows.append(row)
    rows.append({"row": PAPER_ROW, "epoch": PAPER["epoch"], "paper_ood_accuracy": PAPER["accuracy"], "paper_ood_recall": PAPER["recall"]})
    return pd.DataFrame(rows)


def _reference_text(out_of_domain: dict) -> str:
    ref = out_of_domain["reference"]
    if ref["source"] == ORACLE_SOURCE:
        return f"{ref['pairs']:,} synthetic web pairs, ORACLE boxes (the world's true boxes + noise), not Grounding DINO"
    return f"{ref['pairs']:,} web pairs, boxes by {ref['source'].replace(':', ' ', 1)}"


def caption(out_of_domain: dict) -> str:
    return (f"Figure 5: the TPD's patch detection per pretraining epoch, run {out_of_domain['run']} ({out_of_domain['profile']} profile). "
            f"In domain: held-out COCO boxes, each guided by its text (\"This is a {{label}}.\"). Out of domain: "
            f"{_reference_text(out_of_domain)}, each guided by its caption, labels = patches any box overlaps. "
            f"Top-K: {DEFINITIONS['kept']}; score > 0.5: {DEFINITIONS['score_above_0.5']}. Micro-averaged over patches; "
            f"chance = keeping as many patches at random. \"paper\": the paper's epoch-30 numbers on CC3M with Grounding DINO "
            f"boxes, for reference only")


def _display(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["epoch", "step", "in-domain accuracy (top-K)", "in-domain recall (top-K)", "out-of-domain accuracy (top-K)",
              "out-of-domain recall (top-K)", "out-of-domain accuracy (score > 0.5)", "out-of-domain recall (score > 0.5)",
              "out-of-domain accuracy (paper)", "out-of-domain recall (paper)"]
    body = []
    for _, r in frame.iterrows():
        if r["row"] == PAPER_ROW:
            body.append([f"{PAPER['epoch']} (paper)", "", "", "", "", "", "", "", f"{PAPER['accuracy']:g}", f"{PAPER['recall']:g}"])
            continue
        values = [r[c] for c in ("id_kept_accuracy", "id_kept_recall", "ood_kept_accuracy", "ood_kept_recall", "ood_score_accuracy",
                                 "ood_score_recall")]
        body.append([str(int(r["epoch"])), str(int(r["step"])), *(f"{v:.3f}" for v in values), "", ""])
    return header, body


def figure5_figure(frame: pd.DataFrame, out_of_domain: dict) -> Figure:
    measured = frame[frame["row"] != PAPER_ROW]
    epochs = measured["epoch"].tolist()
    fig = new_figure(11.0, 4.4)
    ref = out_of_domain["reference"]
    boxes = "oracle boxes" if ref["source"] == ORACLE_SOURCE else "Grounding DINO boxes"
    titles = {"id": "(a) in domain: held-out COCO boxes", "ood": f"(b) out of domain: {ref['pairs']:,} web pairs, {boxes}"}
    for n, prefix in enumerate(("id", "ood")):
        ax = fig.add_subplot(1, 2, n + 1)
        for metric, color in (("accuracy", "C0"), ("recall", "C1")):
            ax.plot(epochs, measured[f"{prefix}_kept_{metric}"], "-o", color=color, label=f"{metric}, top-K")
            ax.plot(epochs, measured[f"{prefix}_score_{metric}"], "--s", color=color, label=f"{metric}, score > 0.5")
            ax.plot(epochs, measured[f"{prefix}_chance_{metric}"], ":", color=color, alpha=0.6, label=f"{metric}, chance (top-K)")
            if prefix == "ood":
                ax.axhline(PAPER[metric], color=color, linestyle="-.", linewidth=0.8, alpha=0.5,
                           label=f"{metric}, paper at epoch {PAPER['epoch']} (reference)")
        ax.set(xlabel="pretraining epoch", ylabel="accuracy / recall", ylim=(0, 1), xticks=epochs)
        ax.set_title(titles[prefix], fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(f"Figure 5: TPD accuracy and recall per epoch, run {out_of_domain['run']} ({out_of_domain['profile']} profile)"
                 + (" - out-of-domain boxes: synthetic oracle, not Grounding DINO" if out_of_domain["reference"]["source"] == ORACLE_SOURCE else ""),
                 fontsize=9)
    fig.tight_layout()
    return fig


def write_figure5(in_domain_path: Path, out_of_domain_path: Path, table_stem: Path, figure_stem: Path) -> list[Path]:
    """The table (.csv .md .tex .json) and the figure (.png .pdf)."""
    in_domain, out_of_domain = _read(in_domain_path), _read(out_of_domain_path)
    frame = figure5_frame(in_domain, out_of_domain)
    text = caption(out_of_domain)
    header, body = _display(frame)
    table_stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md, tex, js = (table_stem.with_name(table_stem.name + s) for s in (".csv", ".md", ".tex", ".json"))
    frame.to_csv(csv, index=False, float_format="%.6g")
    md.write_text(markdown_table(header, body, text), encoding="utf-8")
    tex.write_text(latex_table(header, body, text, "fig:figure5-data", "l" + "r" * (len(header) - 1), len(body) - 1), encoding="utf-8")
    metrics = {r["row"]: {c: round(float(r[c]), 4) for c in ("ood_kept_accuracy", "ood_kept_recall", "id_kept_accuracy", "id_kept_recall")}
               for _, r in frame.iterrows() if r["row"] != PAPER_ROW}
    js.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [csv, md, tex, js, *save_figure(figure5_figure(frame, out_of_domain), figure_stem)]
