"""The pretraining figure of a run: training losses per step (DVCLive's series) and the held-out
probes per epoch (copa.eval.pretraining), each next to its chance level or its bounds."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from copa.report.figures import new_figure, save_figure

LOSS_TERMS = ("itc", "itm", "mlm", "prefix", "pta")


def read_live_series(live_dir: Path, names: Sequence[str], section: str = "train") -> dict[str, pd.DataFrame]:
    """DVCLive's ``plots/metrics/<section>/<name>.tsv`` series that exist, as (step, value) frames."""
    out = {}
    for name in names:
        path = Path(live_dir) / "plots" / "metrics" / section / f"{name}.tsv"
        if path.is_file():
            frame = pd.read_csv(path, sep="\t")
            out[name] = frame.rename(columns={name: "value"})[["step", "value"]]
    if not out:
        raise FileNotFoundError(f"{live_dir}: no DVCLive series among {', '.join(names)} (is it a run's dvclive folder?)")
    return out


def pretraining_figure(live_dir: Path, probes: Sequence[dict], switch_step: int | None, title: str, stem: Path) -> list[Path]:
    """Eight panels: (a) losses, (b) held-out patch selection, (c) held-out TPD score ranking (AP),
    (d) the fusion's word grounding (copa.eval.word_grounding), (e) held-out ITC retrieval R@1,
    (f) held-out ITM balanced accuracy and AUC, (g) the same-image contrast of the TPD's AP under two texts
    (copa.eval.same_image_contrast), (h) target-patch recall per keep ratio at the last checkpoint,
    between the random and oracle selections (copa.eval.target_recall)."""
    losses = read_live_series(live_dir, LOSS_TERMS)
    fig = new_figure(26, 11.5)
    (ax_loss, ax_patch, ax_ap, ax_words), (ax_ret, ax_itm, ax_contrast, ax_recall) = fig.subplots(2, 4)

    for name, series in losses.items():
        ax_loss.plot(series["step"], series["value"], label=name, linewidth=1.2)
    if switch_step is not None:
        ax_loss.axvline(switch_step, color="grey", linestyle=":", linewidth=1)
        ax_loss.text(switch_step, 0.98, " detector on", transform=ax_loss.get_xaxis_transform(), va="top", fontsize=8, color="grey")
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="optimizer step", ylabel="training loss (log scale)", title="(a) losses per step")
    ax_loss.legend(fontsize=8)

    epochs = [p["epoch"] for p in probes]
    detection = [p["patch_detection"] for p in probes]
    if detection and "kept" in detection[0]:
        selection = detection[0]["selection"]
        for key, label, style in (("kept", selection, "-"), ("kept_other_text", f"{selection}, another box's text", "-."),
                                  ("cls_attention_kept", "[CLS] attention", "--")):
            if key in detection[0]:
                ax_patch.plot(epochs, [d[key]["precision"] for d in detection], style, marker="o", color="C0", label=f"precision, {label}")
                ax_patch.plot(epochs, [d[key]["recall"] for d in detection], style, marker="s", color="C1", label=f"recall, {label}")
        ax_patch.axhline(detection[-1]["chance_kept"]["precision"], color="C0", linestyle=":", label="precision by chance (base rate)")
        ax_patch.axhline(detection[-1]["chance_kept"]["recall"], color="C1", linestyle=":", label="recall by chance (kept fraction)")
        ax_patch.set_ylim(0, 1)
        ax_patch.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: the curves overlap
    else:
        ax_patch.text(0.5, 0.5, "no selection: every patch kept", ha="center", va="center", transform=ax_patch.transAxes)
    n = detection[0]["samples"] if detection else 0
    ax_patch.set(xlabel="epoch", ylabel="patch precision / recall", title=f"(b) held-out boxes ({n:,}): kept patches vs labels")

    if detection and "score_ap" in detection[0]:
        ax_ap.plot(epochs, [d["score_ap"]["text"] for d in detection], marker="o", color="C0", label="TPD scores, the box's text")
        ax_ap.plot(epochs, [d["score_ap"]["other_text"] for d in detection], "-.", marker="o", color="C1", label="TPD scores, another box's text")
        refs = detection[-1]["ap_references"]
        for key, label, color in (("same_text_boxes", "boxes of the same text first (text-aware best)", "C2"),
                                  ("all_boxes", "every box first (text-free best)", "C4"), ("chance", "random ranking", "grey")):
            ax_ap.axhline(refs[key], color=color, linestyle=":", label=label)
        ax_ap.set_ylim(0, 1)
        ax_ap.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    else:
        ax_ap.text(0.5, 0.5, "no detector scores", ha="center", va="center", transform=ax_ap.transAxes)
    ax_ap.set(xlabel="epoch", ylabel="average precision", title="(c) held-out boxes: patches ranked by score")

    retrieval = [p["retrieval"] for p in probes]
    for key, label, color in (("tr_r1", "image -> text R@1", "C2"), ("ir_r1", "text -> image R@1", "C3")):
        ax_ret.plot(epochs, [r[key] for r in retrieval], marker="o", color=color, label=label)
        if retrieval:
            ax_ret.axhline(retrieval[-1]["chance"][key], color=color, linestyle=":", label=f"{label} by chance")
    shape = f"{retrieval[0]['images']} images, {retrieval[0]['texts']} texts" if retrieval else ""
    ax_ret.set(xlabel="epoch", ylabel="recall (%)", title=f"(e) held-out ITC retrieval ({shape})")
    ax_ret.set_ylim(bottom=0)
    ax_ret.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    _words_panel(ax_words, epochs, [p["word_grounding"] for p in probes])
    _itm_panel(ax_itm, epochs, [p["itm"] for p in probes])
    _contrast_panel(ax_contrast, epochs, [p["same_image_contrast"] for p in probes])
    _recall_panel(ax_recall, probes[-1].get("target_recall") if probes else None, epochs[-1] if epochs else None)
    for ax in (ax_patch, ax_ap, ax_words, ax_ret, ax_itm, ax_contrast):
        ax.set_xticks(epochs)

    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, stem)


def _itm_panel(ax, epochs: Sequence[int], itm: Sequence[dict]) -> None:
    for kind, color in (("hard", "C0"), ("random", "C1")):
        ax.plot(epochs, [r[kind]["balanced"] for r in itm], marker="o", color=color, label=f"{kind} negatives")
        if all("auc" in r[kind] for r in itm):  # evaluations before the AUC have none
            ax.plot(epochs, [r[kind]["auc"] for r in itm], marker="x", linestyle="--", color=color, label=f"{kind}: AUC")
    if itm:
        ax.axhline(itm[-1]["constant"], color="grey", linestyle=":", label="constant predictor")
    n = f"{itm[0]['positives']} positives, {itm[0]['negatives_per_kind']} negatives per kind" if itm else ""
    ax.set(xlabel="epoch", ylabel="balanced accuracy (AUC dashed)", title=f"(f) held-out ITM ({n})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)


def _contrast_panel(ax, epochs: Sequence[int], contrast: Sequence[dict]) -> None:
    if not contrast or "contrast" not in contrast[0]:
        ax.text(0.5, 0.5, contrast[0].get("note", "no contrast") if contrast else "no contrast", ha="center", va="center",
                transform=ax.transAxes, wrap=True)
    else:
        estimate = [c["contrast"]["estimate"] for c in contrast]
        errors = [[e - c["contrast"]["low"] for e, c in zip(estimate, contrast)], [c["contrast"]["high"] - e for e, c in zip(estimate, contrast)]]
        ax.errorbar(epochs, estimate, yerr=errors, marker="o", color="C0", capsize=3, label="TPD: AP(A's text) - AP(B's text), 95% interval")
        bounds = contrast[-1]["bounds"]
        ax.axhline(bounds["text_aware"]["contrast"]["estimate"], color="C2", linestyle=":", label="text-aware best (annotations)")
        ax.axhline(bounds["text_free"]["contrast"]["estimate"], color="C4", linestyle=":", label="any text-free scorer")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    n = f"{contrast[0]['images']} images, {contrast[0]['pairs']} pairs" if contrast and "pairs" in contrast[0] else ""
    ax.set(xlabel="epoch", ylabel="AP difference, A's patches", title=f"(g) same-image contrast ({n})")


def _words_panel(ax, epochs: Sequence[int], grounding: Sequence[dict]) -> None:
    classes = list(grounding[0]) if grounding else []
    for i, cls in enumerate(classes):
        color = f"C{i}"
        ax.plot(epochs, [g[cls]["own_image_within_class"] for g in grounding], marker="o", color=color, label=f"{cls}, the caption's image")
        ax.plot(epochs, [g[cls]["other_image_within_class"] for g in grounding], "-.", marker="o", color=color, label=f"{cls}, another image")
        ax.axhline(grounding[-1][cls]["within_class_chance"], color=color, linestyle=":", label=f"{cls}, chance")
    if classes:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    else:
        ax.text(0.5, 0.5, "no masked words", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="epoch", ylabel="masked word recovered (%)", title="(d) word grounding: MLM of a masked word, within its class")
    ax.set_ylim(0, 100)


def _recall_panel(ax, recall: dict | None, epoch: int | None) -> None:
    if recall is None:
        ax.text(0.5, 0.5, "no target questions", ha="center", va="center", transform=ax.transAxes)
    else:
        styles = {"oracle": ("C2", ":"), "random": ("grey", ":"), "cls_attention": ("C1", "--")}
        for i, (name, rows) in enumerate(recall["selectors"].items()):
            color, style = styles.get(name, (f"C{i + 3}", "-"))
            ax.plot([r["keep_ratio"] for r in rows], [r["micro"] for r in rows], style, marker="o", color=color,
                    label="[CLS] attention" if name == "cls_attention" else name)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    n = f"{recall['questions']:,} questions, epoch {epoch}" if recall else ""
    ax.set(xlabel="keep ratio", ylabel="share of target patches kept", title=f"(h) target-patch recall ({n})")
