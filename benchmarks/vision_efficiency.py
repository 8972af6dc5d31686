"""Visual-encoder cost of the token selectors at ViT-B/16, 224 px: MACs and CPU throughput.

    python benchmarks/vision_efficiency.py [--batch 8] [--iters 3] [--threads 2]

Random weights. MACs = FlopCounterMode FLOPs / 2, per image, with timm's fused attention OFF
while counting (with SDPA on CPU the attention matmuls count as 0, ENVIRONMENT.md); matmuls,
linears and the patch convolution only (norms, softmax, GELU are not counted). Throughput:
images/s of the encoder alone, best of ``--iters`` timed batches after one warm-up round, the
configurations timed round robin (so that load from other processes hits all alike), fused
attention on (the inference path; selection layers use explicit attention to read weights).
"analytic" is the per-block MAC formula applied to the token counts each layer sees; "tok/layer"
is the mean number of tokens per layer over 197. The paper's numbers are for the WHOLE model
(ViT + 6-layer text encoder + 6-layer fusion, 40 text tokens, V100): a labelled reference only.
"""

from __future__ import annotations

import argparse
import time

import torch
from timm.layers import Attention
from torch.utils.flop_counter import FlopCounterMode

from copa.models.selectors import build_selector, num_keep
from copa.models.vit import VisionEncoder

D, DEPTH, HEADS, MLP_RATIO, PATCH, SIZE = 768, 12, 12, 4.0, 16, 224
N = (SIZE // PATCH) ** 2  # 196 patches

# COPA Table 9 (whole model, GFLOPs at 224 px / 40 text tokens): (location, ratio) -> GFLOPs
PAPER_TABLE9 = {
    (4, 0.1): 10.15, (4, 0.3): 14.84, (4, 0.5): 16.62, (4, 0.7): 23.32,
    (6, 0.1): 16.51, (6, 0.3): 17.84, (6, 0.5): 19.84, (6, 0.7): 26.77,
    (8, 0.1): 22.45, (8, 0.3): 23.36, (8, 0.5): 25.66, (8, 0.7): 30.22,
}
PAPER_NONE = 36.63  # mPLUG / COPA without TPD, Table 9 and Table 4

CONFIGS = (  # (label, selector name, location, options)
    [("none", "none", 6, {}), ("cls_attention 6/50%", "cls_attention", 6, {"keep_ratio": 0.5})]
    + [(f"tpd {k}/{int(r * 100)}%", "tpd", k, {"keep_ratio": r})
       for k in (4, 6, 8) for r in (0.1, 0.3, 0.5, 0.7)]
    + [("text_attention [5,10]/70%", "text_attention", [5, 10], {"keep_ratio": 0.7})]
)


def block_macs(n_attn: int, n_mlp: int) -> float:
    """MACs of one ViT block: qkv + q k^T + attn v + proj on n_attn tokens, MLP on n_mlp."""
    return 4 * n_attn * D * D + 2 * n_attn * n_attn * D + 2 * MLP_RATIO * n_mlp * D * D


def token_schedule(name: str, location, options: dict) -> list[tuple[int, int]]:
    """(tokens in attention, tokens in MLP) per layer, mirroring the selectors' rules."""
    sel = build_selector(name, D, **options)
    locations = {location} if isinstance(location, int) else set(location)
    n, per_layer = N, []
    for layer in range(1, DEPTH + 1):
        n_attn = 1 + n
        if name != "none" and layer in locations:
            k = num_keep(n, sel.keep_ratio, sel.rounding)
            n = k + (k < n and sel.fusion != "drop")
        per_layer.append((n_attn, 1 + n if sel.inside_block else n_attn))
    return per_layer


def analytic_macs(name: str, location, options: dict) -> tuple[float, float]:
    """(encoder MACs, mean tokens per layer) from the token schedule."""
    schedule = token_schedule(name, location, options)
    macs = N * 3 * PATCH * PATCH * D + sum(block_macs(a, m) for a, m in schedule)
    if name == "tpd":  # the detector MLP (2D -> D -> D -> 1), its text half once per image
        macs += N * (D * D + D * D + D) + D * D
    return macs, sum(m for _, m in schedule) / DEPTH


def paper_gflops(name: str, location, options: dict) -> float | None:
    if name == "none":
        return PAPER_NONE
    return PAPER_TABLE9.get((location, options["keep_ratio"])) if name == "tpd" else None


def set_fused(model: torch.nn.Module, enable: bool) -> None:
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused_attn = enable


def count_macs(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, SIZE, SIZE)
    text_cls = torch.randn(args.batch, D)
    x_k = torch.randn(args.batch, 1 + N, D)  # a layer-k sequence for timing the TPD alone

    # one set of ViT weights shared by every configuration; each keeps its own selector
    base = VisionEncoder(build_selector("none", D), 6).eval()
    models, macs, jobs = {}, {}, {}
    for label, name, location, options in CONFIGS:
        model = VisionEncoder(build_selector(name, D, **options), location).eval()
        for part in ("patch_embed", "cls_token", "pos_embed", "blocks", "norm"):
            setattr(model, part, getattr(base, part))
        models[label] = model
        with torch.no_grad():
            set_fused(model, False)
            macs[label] = count_macs(lambda: model(images[:1], text_cls[:1]))
        set_fused(model, True)
        jobs[label] = lambda m=model: m(images, text_cls)
        if name == "tpd":
            jobs["selector " + label] = lambda m=model: m.selector.select_text(x_k, text_cls)
    set_fused(base, True)

    # round robin over the configurations, so that load from other processes hits all alike;
    # the first round is a warm-up, then the best of --iters rounds
    best = dict.fromkeys(jobs, float("inf"))
    with torch.no_grad():
        for round_ in range(args.iters + 1):
            for label, job in jobs.items():
                start = time.perf_counter()
                job()
                if round_:
                    best[label] = min(best[label], time.perf_counter() - start)

    print(f"ViT-B/16 {SIZE} px, batch {args.batch}, {args.threads} threads, best of {args.iters} "
          "(encoder only; MACs per image)")
    print(f"{'config':28s} {'GMACs':>6s} {'ratio':>6s} {'analytic':>8s} {'tok/layer':>9s} "
          f"{'img/s':>6s} {'speedup':>7s} | paper whole model: GFLOPs ratio")
    base_analytic = analytic_macs("none", 6, {})[0]
    for label, name, location, options in CONFIGS:
        analytic, tokens = analytic_macs(name, location, options)
        paper = paper_gflops(name, location, options)
        ref = f"{paper:6.2f} {paper / PAPER_NONE:5.2f}" if paper else ""
        print(f"{label:28s} {macs[label] / 1e9:6.2f} {macs[label] / macs['none']:6.2f} "
              f"{analytic / base_analytic:8.2f} {tokens / (1 + N):9.2f} "
              f"{args.batch / best[label]:6.2f} {best['none'] / best[label]:6.2f}x | {ref}")

    print("\nTPD overhead (MLP + top-K + gather + fuse on a layer-k output, timed alone):")
    for label, name, location, options in CONFIGS:
        if name != "tpd":
            continue
        model, t_sel, t_enc = models[label], best["selector " + label], best[label]
        with torch.no_grad():
            sel_macs = count_macs(lambda: model.selector.select_text(x_k[:1], text_cls[:1]))
        print(f"  {label:14s} {t_sel * 1e3:6.1f} ms of {t_enc * 1e3:7.1f} ms "
              f"({100 * t_sel / t_enc:4.1f}% of this encoder, {100 * t_sel / best['none']:4.1f}% of `none`), "
              f"{sel_macs / 1e9:.3f} of {macs[label] / 1e9:.2f} GMACs")
    print("\nReference (labelled, not comparable: whole model incl. text encoder and fusion, "
          "V100): COPA Table 9 none 36.63 GFLOPs, loc 6 / 50% 19.84 GFLOPs (x0.54), "
          "throughput x1.88 (349.71 vs 186.42 pairs/s); TRIPS [5,10]/70% 20.89 GFLOPs.")


if __name__ == "__main__":
    main()
