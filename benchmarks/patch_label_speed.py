"""Throughput of box -> patch labels: rasterise + pack of random boxes (COPA §3.3 rule).

    python benchmarks/patch_label_speed.py [--boxes 1000000] [--image-size 256] [--patch-size 16]

Prints boxes/s for rasterise alone and for rasterise + pack (what build_store does), best of
``--repeats`` runs. The target is >= 1M boxes/s on 2 cores at G = 16.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from copa.data.patch_labels import pack, rasterise


def random_boxes(rng: np.random.Generator, count: int, image_size: int) -> np.ndarray:
    """(count, 4) xywh boxes inside the image, sides from 1 px to the whole image."""
    x0, x1 = np.sort(rng.uniform(0, image_size, (2, count)), axis=0)
    y0, y1 = np.sort(rng.uniform(0, image_size, (2, count)), axis=0)
    return np.stack([x0, y0, np.maximum(x1 - x0, 1.0), np.maximum(y1 - y0, 1.0)], axis=1)


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=1_000_000)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--min-overlap", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    boxes = random_boxes(np.random.default_rng(0), args.boxes, args.image_size)
    grid = args.image_size // args.patch_size
    label = lambda: rasterise(boxes, args.image_size, args.patch_size, args.min_overlap)  # noqa: E731
    t_raster = best_of(args.repeats, label)
    t_both = best_of(args.repeats, lambda: pack(label()))
    print(f"{args.boxes} boxes, G={grid}, min_overlap={args.min_overlap}")
    print(f"rasterise:        {args.boxes / t_raster / 1e6:.2f} M boxes/s ({t_raster:.3f} s)")
    print(f"rasterise + pack: {args.boxes / t_both / 1e6:.2f} M boxes/s ({t_both:.3f} s)")


if __name__ == "__main__":
    main()
