"""Multiply-accumulates of COPA's understanding forward (ViT + text encoder + fusion, as for VQA
and ITM) at the paper's efficiency setting: 224 px (197 image tokens), 40 text tokens, random
weights, batch 1. Printed for every selection next to the paper's FLOPs (a labelled reference).

    python benchmarks/model_efficiency.py

MACs are counted with torch.utils.flop_counter with timm's fused attention off (ENVIRONMENT.md:
the fused CPU kernel counts as 0) and transformers' eager attention.
"""

from __future__ import annotations

import timm.layers
import torch
from torch.utils.flop_counter import FlopCounterMode

from copa.models.copa import CopaModel, CopaSpec

PAPER_GFLOPS = {"none": 36.63, "tpd@6/0.5": 19.84, "tpd@4/0.1": 10.15, "tpd@8/0.7": 30.22}  # COPA Table 9 (whole model, V100)


def macs(spec: CopaSpec, text_length: int = 40) -> float:
    model = CopaModel(spec).eval()
    for module in model.modules():  # eager attention in the BERT parts, so the counter sees it
        if hasattr(module, "config") and hasattr(module.config, "_attn_implementation"):
            module.config._attn_implementation = "eager"
    images = torch.randn(1, 3, spec.image_size, spec.image_size)
    ids = torch.randint(5, spec.vocab_size, (1, text_length))
    mask = torch.ones(1, text_length, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        text = model.encode_text(ids, mask)
        image = model.encode_image(images, text[:, 0])["tokens"]
        model.fuse(image, text, mask)
    return counter.get_total_flops() / 2


def main() -> None:
    timm.layers.set_fused_attn(False)
    torch.manual_seed(0)
    rows = [("none", dict(selection="none")), ("tpd@4/0.1", dict(location=4, keep_ratio=0.1)), ("tpd@6/0.5", dict(location=6, keep_ratio=0.5)), ("tpd@8/0.7", dict(location=8, keep_ratio=0.7))]
    base = None
    print(f"{'selection':<12} {'GMACs':>7} {'ratio':>6}   paper GFLOPs (reference) and ratio")
    for name, options in rows:
        value = macs(CopaSpec(vocab_size=30522, image_size=224, decoder_layers=1, **options)) / 1e9
        base = base or value
        paper = PAPER_GFLOPS[name]
        print(f"{name:<12} {value:7.2f} {value / base:6.2f}   {paper:6.2f} ({paper / PAPER_GFLOPS['none']:.2f})")


if __name__ == "__main__":
    main()
