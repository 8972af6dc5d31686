"""One Algorithm 1 step of a profile's pretraining module under DDP, as the engine runs it
(copa.train.engine, copa.train.distributed): the process group from torchrun's environment (NCCL
on a GPU, gloo on a CPU), the module wrapped in DistributedDataParallel with the engine's settings,
AdamW over the run's parameter groups, forward (bf16 autocast on a GPU if asked) + backward +
optimiser step + the module's after_step, on a synthetic batch (copa.eval.cost_inputs), each rank
its own. Rank 0 writes a JSON: the backend, the world size, the step's seconds, its loss, the peak
GPU memory, and whether the parameters are identical on every rank after the step.

    torchrun --standalone --nproc_per_node 1 benchmarks/ddp_step.py --device cuda --amp bf16 --out results/paper-gpu/ddp_step.json
    torchrun --standalone --nproc_per_node 2 benchmarks/ddp_step.py --profile fixture --image-size 32 --text-length 8 \\
        --pairs 2 --objects 2 --out /tmp/ddp.json        # on a CPU: gloo
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim import AdamW

from copa.config import load_params
from copa.eval.cost_inputs import pretraining_batch
from copa.eval.training_memory import SizedVocabulary
from copa.train import distributed
from copa.train.architectures import architecture, resolve
from copa.train.engine import EngineConfig, seed_everything
from copa.train.schedule import model_param_groups


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="paper")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (the package's resolve_device)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast of the forward, on CUDA only (as the engine)")
    p.add_argument("--pairs", type=int, default=32, help="image-text pairs per rank")
    p.add_argument("--objects", type=int, default=16, help="object samples (PTA) per rank")
    p.add_argument("--image-size", type=int, default=None, help="default: the profile's pretraining resolution (patch_labels.image_size)")
    p.add_argument("--text-length", type=int, default=25)
    p.add_argument("--out", type=Path, required=True, help="the JSON rank 0 writes")
    return p


def parameters_checksum(model: torch.nn.Module) -> float:
    """A sum over every parameter (float64): equal on two ranks when DDP kept them in step."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    ctx = distributed.setup(args.device)
    try:
        overrides = list(args.overrides)
        if args.image_size is not None:
            overrides.append(f"patch_labels.image_size={args.image_size}")
        params = load_params(args.profile, overrides)
        size, vocab = params.patch_labels.image_size, params.model.vocab_size
        seed_everything(params.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = resolve(architecture(params).build_pretraining)(params, SizedVocabulary(vocab)).to(ctx.device).train()
        model.detector_on.fill_(True)  # as after the warm-up: the TPD selects
        p = params.pretrain
        optimizer = AdamW(model_param_groups(model, params.model.selection.lr, p.lr_vision, p.lr_text, p.weight_decay))
        net = model
        if ctx.world_size > 1:  # as copa.train.engine wraps it
            net = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                          find_unused_parameters=EngineConfig.find_unused_parameters,
                                          broadcast_buffers=EngineConfig.broadcast_buffers)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.amp == "bf16" and ctx.device.type == "cuda" else nullcontext()
        batch = pretraining_batch(args.pairs, args.objects, size, args.text_length, params.patch_labels.patch_size, vocab,
                                  ctx.device, seed=params.seed + ctx.rank)  # each rank its own data
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        distributed.barrier(ctx)
        start = time.perf_counter()
        with autocast:
            out = net(batch)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        model.after_step(0)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - start
        checksums = distributed.gather_objects(parameters_checksum(model), ctx)
        record = {
            "step": f"{type(model).__name__} forward + backward + AdamW step + after_step, detector on",
            "profile": args.profile, "overrides": overrides, "device": str(ctx.device), "amp": args.amp,
            "backend": dist.get_backend() if dist.is_initialized() else None, "world_size": ctx.world_size,
            "pairs_per_rank": args.pairs, "objects_per_rank": args.objects, "image_size": size, "text_length": args.text_length,
            "seconds": seconds, "loss": float(out["loss"].detach()),
            "cuda_max_allocated_mib": torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.device.type == "cuda" else None,
            "parameter_checksums": checksums, "parameters_identical_on_ranks": len(set(checksums)) == 1,
        }
        if ctx.is_main:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            print(json.dumps({k: v for k, v in record.items() if k != "parameter_checksums"}))
    finally:
        distributed.teardown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
