"""Filter + patch labels at Visual Genome scale: annotations/s and peak memory (issue 3).

    python benchmarks/preprocess_speed.py [--scale 1.0] [--workdir /tmp/copa-bench-vg]

Writes image_data.json, objects.json and region_descriptions.json in the official VG format
(108,077 images, 3.8M objects, 5.4M regions at scale 1; random boxes, ~40% of them under 1% of
the image as in real VG; random phrases with some near-duplicates; no image files, so the
filter runs with image_check=none), then runs `filter` and `patch labels` in a fresh process
and prints annotations/s end to end and the peak resident memory of all its processes together.
Targets on a 2-core machine: >= 100K annotations/s, < 8 GB peak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import psutil

VG_IMAGES, VG_OBJECTS, VG_REGIONS = 108_077, 3_802_349, 5_402_953
WORDS = [f"w{i}" for i in range(3000)]
LABELS = [f"thing{i}" for i in range(2000)]


def _boxes(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """(n, 4) integer x, y, w, h; side fractions log-uniform so that ~40% are under 1% of the image."""
    fw, fh = np.exp(rng.uniform(np.log(0.02), np.log(0.9), size=(2, n)))
    w, h = np.maximum(1, fw * width).astype(int), np.maximum(1, fh * height).astype(int)
    x = (rng.uniform(0, 1, n) * (width - w + 1)).astype(int)
    y = (rng.uniform(0, 1, n) * (height - h + 1)).astype(int)
    bad = rng.random(n) < 0.01  # a few invalid ones, as in the real files
    x[bad] -= w[bad] // 2
    return np.stack([x, y, w, h], axis=1)


def generate(root: Path, scale: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    vg = root / "vg"
    vg.mkdir(parents=True, exist_ok=True)
    n_images = int(VG_IMAGES * scale)
    sizes = rng.integers(300, 801, size=(n_images, 2))
    (vg / "image_data.json").write_bytes(orjson.dumps([
        {"width": int(w), "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{i + 1}.jpg", "height": int(h), "image_id": i + 1, "coco_id": None, "flickr_id": None}
        for i, (w, h) in enumerate(sizes)
    ]))
    per_image = {"objects": VG_OBJECTS / VG_IMAGES, "regions": VG_REGIONS / VG_IMAGES}
    next_id = 1
    for kind, file in (("objects", "objects.json"), ("regions", "region_descriptions.json")):
        counts = rng.poisson(per_image[kind], size=n_images)
        with open(vg / file, "wb") as f:  # streamed: one image's entry at a time
            f.write(b"[")
            for i, ((w, h), n) in enumerate(zip(sizes, counts)):
                boxes = _boxes(rng, int(n), int(w), int(h)).tolist()
                if kind == "objects":
                    labels = rng.integers(len(LABELS), size=n)
                    items = [{"synsets": [], "h": b[3], "object_id": next_id + k, "names": [LABELS[l]], "w": b[2], "y": b[1], "x": b[0]} for k, (b, l) in enumerate(zip(boxes, labels))]
                    entry = {"image_id": i + 1, "objects": items, "image_url": ""}
                else:
                    phrases = [" ".join(WORDS[j] for j in rng.integers(len(WORDS), size=rng.integers(2, 7))) for _ in range(n)]
                    for k in range(1, len(phrases)):  # ~5% near-duplicates of the previous phrase
                        if rng.random() < 0.05:
                            phrases[k] = phrases[k - 1] + " here"
                    items = [{"region_id": next_id + k, "width": b[2], "height": b[3], "image_id": i + 1, "phrase": p, "y": b[1], "x": b[0]} for k, (b, p) in enumerate(zip(boxes, phrases))]
                    entry = {"regions": items, "id": i + 1}
                next_id += int(n)
                f.write((b"," if i else b"") + orjson.dumps(entry))
            f.write(b"]")


class PeakMemory(threading.Thread):
    """Samples the memory of this process and its children (the workers), summed: PSS (each shared
    page counted once, split among its sharers) and RSS (shared pages counted in every process)."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.peak_pss, self.peak_rss, self.running = interval, 0, 0, True

    def run(self) -> None:
        me = psutil.Process()
        while self.running:
            pss = rss = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                except psutil.NoSuchProcess:
                    continue
                pss, rss = pss + info.pss, rss + info.rss
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            time.sleep(self.interval)


def measure(root: Path, out: Path, workers: int) -> None:
    """Runs in its own process, so that the memory measured is the pipeline's alone."""
    from copa.config import load_params
    from copa.data.filtering import run_filter

    params = load_params("paper", ["filter.sources=[vg_objects, vg_regions]", "filter.image_check=none"])
    memory = PeakMemory()
    memory.start()
    start = time.perf_counter()
    report = run_filter(root, params.filter, out / "annotations", progress=False, workers=workers)
    filtered = time.perf_counter()
    labelled = _patch_labels(out, params, workers)
    end = time.perf_counter()
    memory.running = False
    records = sum(s["records"] for s in report["sources"].values())
    kept = sum(s["kept"] for s in report["sources"].values())
    print(json.dumps({
        "annotations": records, "kept": kept, "patch_labels": labelled,
        "filter_seconds": round(filtered - start, 1), "patch_label_seconds": round(end - filtered, 1),
        "annotations_per_second": round(records / (end - start)),
        "workers": workers,
        "peak_memory_gib_all_processes_pss": round(memory.peak_pss / 2**30, 2),
        "peak_memory_gib_all_processes_rss": round(memory.peak_rss / 2**30, 2),
    }))


def _patch_labels(out: Path, params, workers: int) -> int:
    from copa.data.patch_labels import build_store

    store = build_store(out / "annotations", params.patch_labels, workers)
    store.save(out / "patch_labels.npz")
    return len(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of Visual Genome's size")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/copa-bench-vg"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="filter processes (sources at once)")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root, out = args.workdir / "root", args.workdir / "out"
    if args.measure_only:
        measure(root, out, args.workers)
        return
    marker = root / f"generated-{args.scale}"
    if not marker.exists():
        start = time.perf_counter()
        generate(root, args.scale)
        marker.touch()
        print(f"generated VG-scale files (scale {args.scale}) in {time.perf_counter() - start:.0f} s under {root}")
    subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--scale", str(args.scale), "--workers", str(args.workers), "--measure-only"], check=True)


if __name__ == "__main__":
    main()
