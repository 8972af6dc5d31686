"""The filter report as a table in the style of COPA Appendix A ("VG regions 3,699,598 kept of
5,402,953"), with the paper's counts as a labelled reference column, never as measurements."""

from __future__ import annotations

from copa.data.filtering import DROP_REASONS

# COPA Appendix A (= X-VLM Appendix A.1): kept of all, on the real COCO / VG files.
PAPER_KEPT = {"coco_objects": (446_873, 859_999), "vg_objects": (2_043_927, 3_802_349), "vg_regions": (3_699_598, 5_402_953)}
SOURCE_NAMES = {"coco_objects": "COCO objects", "vg_objects": "VG objects", "vg_regions": "VG regions"}


def filter_table(report: dict, profile: str) -> str:
    sources = report["sources"]
    reasons = [r for r in DROP_REASONS if any(s["dropped"].get(r) for s in sources.values())]
    lines = [
        f"# Annotation filtering — profile `{profile}`",
        "",
        *(f"- {SOURCE_NAMES.get(name, name)} {s['kept']:,} kept of {s['records']:,}" for name, s in sources.items()),
        "",
        "| source | file | kept | of | kept % | clipped | " + " | ".join(f"dropped: {r}" for r in reasons) + " | paper (reference, real data): kept of |",
        "|" + " --- |" * (7 + len(reasons)),
    ]
    for name, s in sources.items():
        share = f"{100 * s['kept'] / s['records']:.1f}" if s["records"] else "-"
        paper = PAPER_KEPT.get(name)
        reference = f"{paper[0]:,} of {paper[1]:,} ({100 * paper[0] / paper[1]:.1f}%)" if paper else "-"
        cells = [SOURCE_NAMES.get(name, name), f"`{s['file']}`", f"{s['kept']:,}", f"{s['records']:,}", share, f"{s['clipped']:,}"]
        cells += [f"{s['dropped'].get(r, 0):,}" for r in reasons] + [reference]
        lines.append("| " + " | ".join(cells) + " |")
    p = report["params"]
    lines += [
        "",
        f"Rules: boxes sticking out of the image by at most {p['box_tolerance']} px are clipped, beyond that dropped; "
        f"boxes under {100 * p['min_area_fraction']:g}% of the image are dropped; region phrases whose word overlap "
        f"({p['near_duplicate']['measure']}) with an earlier kept phrase of the image exceeds {p['near_duplicate']['threshold']} are dropped; "
        f"object text: `{p['object_text_template']}`. Every dropped record is listed in `dropped.tsv` beside the filtered files.",
    ]
    return "\n".join(lines) + "\n"
