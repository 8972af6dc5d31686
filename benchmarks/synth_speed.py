"""Time the synthetic world of a profile (default: demo) and print images per second.

    python benchmarks/synth_speed.py [--profile demo] [--workers N]

Target (issue 2): the demo world, every file included, in under a minute on 2 cores.
"""

import argparse
import os
import tempfile
import time

from copa.config import load_params
from copa.data.synth.world import generate_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    params = load_params(args.profile)
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        manifest = generate_world(params.synth, root, progress=False, workers=args.workers)
        seconds = time.perf_counter() - start
    images = sum(manifest["images"].values())
    print(f"profile={args.profile} workers={args.workers} cores={os.cpu_count()} images={images} "
          f"seconds={seconds:.1f} images_per_second={images / seconds:.0f}")


if __name__ == "__main__":
    main()
