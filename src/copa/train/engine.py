"""A generic training engine: loop, DDP, AMP, atomic checkpoints, exact resume, DVCLive logs.

The engine knows nothing of COPA. A :class:`Task` supplies the model, its AdamW parameter
groups, its batches (by epoch, rank and start index) and a post-step hook; :func:`train`
runs it for ``EngineConfig.epochs`` epochs in one process or under ``torchrun`` (DDP).

What lands in ``out_dir``::

    checkpoints/last.pt           every ``checkpoint_every`` steps and at each epoch end
    checkpoints/epoch_{e:03d}.pt  after epoch e (kept, for per-epoch evaluation: Figure 5)
    resolved_params.json          the resolved params and engine settings, and what ran them (copa.provenance)
    dvclive/                      per-step metrics (DVCLive, for ``dvc plots``)
    metrics.json                  the last logged values

A run killed at any point resumes from ``last.pt`` and, on CPU, ends with bit-for-bit the
same parameters as an uninterrupted run: the checkpoint holds model, optimizer, scheduler,
scaler, position (epoch, batch index) and every rank's RNG states, and the task re-creates
the data stream from (epoch, rank, start) alone. That holds at the same torch thread count, library
versions and device: the checkpoint records them, and a resume under others says what changed.

DDP and buffers: DDP averages gradients, so parameters stay identical on every rank, and
``after_step`` (e.g. a momentum update from those parameters) keeps derived state identical
too. ``broadcast_buffers`` defaults to False: with True, DDP would copy every buffer from
rank 0 at each forward, which for a feature queue (ALBEF/COPA: 65,536 x 256 per queue) is a
large broadcast per step and would also hide a task bug that lets ranks drift apart. A task
whose buffers must agree across ranks keeps them in sync itself (a queue is filled with
features all-gathered over ranks); set it to True for BatchNorm-style running statistics.

Test hook: the environment variable ``COPA_KILL_AT_STEP=N`` makes the process SIGKILL itself
right after optimizer step N (1-based) and that step's checkpointing, to test resume.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import AdamW
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from copa.config import UserError
from copa.models.weights import load_tensors
from copa.provenance import code_provenance
from copa.train import distributed
from copa.train.distributed import DistContext

KILL_ENV = "COPA_KILL_AT_STEP"
RESOLVED_FILE = "resolved_params.json"
STATUS_EVERY_S = 30.0  # without a terminal (logs, batch jobs) a status line this often replaces the bar
AMP_MODES = ("none", "bf16", "fp16")
DEVICES = ("cpu", "cuda", "auto")


class NonFiniteLoss(UserError, RuntimeError):
    """A step's loss is NaN or infinite: training stops before the update, naming the step and terms."""


class Task(Protocol):
    """What the engine trains. ``model`` is a plain nn.Module (the engine moves and wraps it)."""

    model: nn.Module
    """``model(batch) -> dict[str, Tensor]`` with a scalar ``"loss"``; the other scalar entries
    are logged as ``train/<key>`` (averaged over ranks), non-scalar entries are ignored."""

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups of ``self.model``; each may set its own ``lr``,
        ``weight_decay`` and a ``name`` (used for the ``lr/<name>`` log)."""
        ...

    def batches(self, epoch: int, rank: int, world_size: int, start: int) -> Iterator[Any]:
        """This rank's batches of ``epoch`` from batch index ``start`` on (skipping the first
        ``start`` by index, without loading them). Must be a function of its arguments (and
        the task's own seed), never of the global RNG, so that resume replays the same stream.
        Batches are tensors or (nested) dicts / lists / tuples of tensors."""
        ...

    def steps_per_epoch(self, world_size: int) -> int:
        """How many batches ``batches`` yields per epoch and rank (from ``start=0``)."""
        ...

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after optimizer step ``step`` (0-based) on the unwrapped model, e.g. the
        momentum-encoder update. Runs on every rank with identical parameters."""
        ...

    # Optional: ``summary() -> dict[str, float]``, run-level numbers (e.g. how much data the run saw),
    # computed once at the end and written to metrics.json beside the last logged values;
    # ``describe_batch(batch) -> str``, what a batch holds (e.g. its image ids) for an error naming it.


def epoch_length(requested: int | None, examples: int, batch_size: int, key: str) -> int:
    """Steps per epoch: ``requested`` (a params value named ``key``; each epoch then draws a fresh
    seeded sample), or one pass over ``examples`` in batches when it is None."""
    full = examples // batch_size
    if requested is None:
        return full
    if not 1 <= requested <= full:
        raise ValueError(f"{key} = {requested}: must be in [1, {full}] ({examples} examples // batch_size {batch_size}), "
                         "or null for one pass")
    return requested


@dataclass(frozen=True)
class EngineConfig:
    """How to train. ``lr_lambda`` is LambdaLR's factor of each group's base lr at a step
    (one callable, or one per parameter group); None keeps the base lr."""

    epochs: int
    lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]] | None = None
    grad_clip: float | None = None  # max global grad norm; None: no clipping
    amp: Literal["none", "bf16", "fp16"] = "none"  # autocast on CUDA only; fp16 adds a GradScaler
    checkpoint_every: int = 1000  # steps (last.pt is also written at each epoch end)
    log_every: int = 10  # steps (the last step is always logged)
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = "auto"
    find_unused_parameters: bool = False  # DDP: True only if some parameters get no grad
    broadcast_buffers: bool = False  # DDP: see "DDP and buffers" in the module docstring
    # top-level params sections this training does not read: editing them does not block a resume
    # (pretraining does not read the fine-tuning, evaluation and efficiency settings)
    resume_ignores: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ints = {"epochs": (self.epochs, 0), "checkpoint_every": (self.checkpoint_every, 1),
                "log_every": (self.log_every, 1)}
        for name, (value, low) in ints.items():
            if not isinstance(value, int) or value < low:
                raise ValueError(f"EngineConfig.{name} must be an int >= {low}, got {value!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"EngineConfig.amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.device not in DEVICES:
            raise ValueError(f"EngineConfig.device must be one of {DEVICES}, got {self.device!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"EngineConfig.grad_clip must be > 0 or None, got {self.grad_clip!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the checkpoint (callables as their repr: they cannot be pickled)."""
        return _plain({f.name: getattr(self, f.name) for f in fields(self)})


def changed_params(current: dict, stored: dict, ignores: tuple[str, ...] = ()) -> list[str]:
    """Top-level keys whose values differ between two resolved-params dicts, but ``ignores``."""
    return sorted(k for k in set(current) | set(stored) if k not in ignores and current.get(k) != stored.get(k))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Call it before building the task's model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace``: readers
    see the old file or the new one, never a partial one, whatever kills us in between."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:  # a failed write (a full disk) names no file: this one
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    # make the rename itself durable (POSIX: fsync the directory entry)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def train(
    task: Task,
    config: EngineConfig,
    out_dir: Path,
    resolved_params: Mapping[str, Any],
    *,
    resume: bool = True,
) -> dict[str, float]:
    """Train ``task`` and return the last logged metrics (plus ``step``).

    Resumes from ``out_dir/checkpoints/last.pt`` when it exists. With ``resume=False`` an
    existing checkpoint is an error (delete the folder to start over). ``resolved_params``
    (JSON-like) is stored in every checkpoint; resuming under different params is an error,
    except in the top-level sections ``config.resume_ignores`` names.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    if not resume and ckpt_dir.is_dir() and any(ckpt_dir.glob("*.pt")):
        raise FileExistsError(
            f"{ckpt_dir} already holds checkpoints and resume=False: delete {out_dir} to start "
            "over, or pass resume=True to continue from checkpoints/last.pt"
        )
    ctx = distributed.setup(config.device)
    try:
        return _train(task, config, out_dir, _plain(resolved_params), ctx)
    finally:
        distributed.teardown(ctx)


def _train(task: Task, config: EngineConfig, out_dir: Path, params: dict, ctx: DistContext) -> dict[str, float]:
    ckpt_dir = out_dir / "checkpoints"
    amp = config.amp
    if amp != "none" and ctx.device.type != "cuda":
        warnings.warn(f"amp={amp!r} needs CUDA; training on {ctx.device} without autocast", stacklevel=3)
        amp = "none"
    if ctx.device.type == "cpu":
        # CPU runs are bit-for-bit repeatable (DESIGN "Conventions"); warn_only since a few
        # ops have no deterministic kernel and a warning is better than a crash there
        torch.use_deterministic_algorithms(True, warn_only=True)

    # 1) model, optimizer, schedule on this rank's device
    model = task.model.to(ctx.device)
    optimizer = AdamW(task.param_groups())
    scheduler = LambdaLR(optimizer, config.lr_lambda or (lambda _: 1.0))
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")  # disabled: every call passes through
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
        if amp != "none" else nullcontext()
    )

    # 2) fresh start or resume (every rank reads the same file, before DDP wraps the model)
    if ctx.is_main:
        _remove_partial_saves(out_dir)
    provenance = {**code_provenance(), "device": str(ctx.device)}
    last = ckpt_dir / "last.pt"
    step, start_epoch, start_batch, metrics = 0, 0, 0, {}
    resumed = last.exists()
    if resumed:
        # weights_only: the payload is plain tensors/containers by construction (_rng_state)
        ckpt = load_tensors(last)
        changed = changed_params(params, ckpt["resolved_params"], config.resume_ignores)
        if changed:
            raise ValueError(f"{last} was written with other parameters (differing keys: {changed}); "
                             f"delete {out_dir} to start over with the new ones")
        _warn_if_not_identical(last, ckpt.get("provenance"), provenance)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step, start_epoch, start_batch, metrics = ckpt["step"], ckpt["epoch"], ckpt["batch"], ckpt["metrics"]
        if len(ckpt["rng"]) == ctx.world_size:
            _set_rng_state(ckpt["rng"][ctx.rank], ctx.device)
        else:
            warnings.warn(f"{last} was written by {len(ckpt['rng'])} ranks, resuming on "
                          f"{ctx.world_size}: RNG streams reseeded, not bit-for-bit", stacklevel=3)
            seed_everything(config.seed + ctx.rank + step)
    else:
        # ranks draw different dropout masks etc.; the model itself is synced by DDP below
        seed_everything(config.seed + ctx.rank)

    if ctx.is_main:  # the run's settings in readable form (the checkpoints hold the same)
        out_dir.mkdir(parents=True, exist_ok=True)
        resolved = {"params": params, "engine": config.as_dict(), "world_size": ctx.world_size, "device": str(ctx.device),
                    "provenance": provenance}
        _atomic_write_text(out_dir / RESOLVED_FILE, json.dumps(resolved, indent=2, sort_keys=True) + "\n")

    net: nn.Module = model
    if ctx.world_size > 1:
        # DDP broadcasts rank 0's parameters and buffers once here, then averages gradients
        net = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
            broadcast_buffers=config.broadcast_buffers,
        )

    live = _open_live(out_dir / "dvclive", resumed, step) if ctx.is_main else None
    steps_per_epoch = task.steps_per_epoch(ctx.world_size)
    total = config.epochs * steps_per_epoch
    bar = tqdm(total=total, initial=step, desc="train", dynamic_ncols=True,
               disable=None if ctx.is_main else True)  # None: off when stderr is not a TTY
    kill_at = int(os.environ.get(KILL_ENV, "0"))
    clock, clock_step, samples = time.perf_counter(), step, 0
    status_lines = ctx.is_main and bar.disable
    last_status = time.perf_counter()

    def checkpoint(epoch: int, batch: int, epoch_done: bool) -> None:
        rng = distributed.gather_objects(_rng_state(ctx.device), ctx)  # collective: all ranks
        if ctx.is_main:
            payload = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "step": step, "epoch": epoch + 1 if epoch_done else epoch,  # where to resume
                "batch": 0 if epoch_done else batch, "rng": rng, "metrics": metrics,
                "resolved_params": params, "engine_config": config.as_dict(), "provenance": provenance,
            }
            if epoch_done:
                atomic_torch_save(payload, ckpt_dir / f"epoch_{epoch:03d}.pt")
            atomic_torch_save(payload, last)
        distributed.barrier(ctx)

    # 3) the loop: forward (autocast), backward, clip, step, schedule, hook, log, checkpoint
    net.train()
    for epoch in range(start_epoch, config.epochs):
        done = start_batch if epoch == start_epoch else 0
        start = done
        for batch in task.batches(epoch, ctx.rank, ctx.world_size, start):
            try:
                out, grad_norm = training_step(net, _to_device(batch, ctx.device), optimizer, scaler, autocast, config.grad_clip)
            except NonFiniteLoss as exc:
                describe = getattr(task, "describe_batch", None)
                raise NonFiniteLoss(f"{out_dir}: step {step + 1} (epoch {epoch + 1}, batch {done + 1}): {exc}"
                                    + (f"; batch: {describe(batch)}" if describe else "")
                                    + "; the run stops, its last checkpoint unchanged") from None
            scheduler.step()
            task.after_step(model, step)
            step += 1
            done += 1
            samples += _batch_size(batch) * ctx.world_size

            if step % config.log_every == 0 or step == total:
                # .item() syncs with the GPU, so only on logged steps
                values = {f"train/{k}": float(v.detach()) for k, v in out.items() if v.numel() == 1}
                if grad_norm is not None:
                    values["train/grad_norm"] = float(grad_norm)
                metrics = distributed.mean_over_ranks(values, ctx)
                metrics.update({f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})
                elapsed = time.perf_counter() - clock
                metrics["perf/steps_per_s"] = (step - clock_step) / elapsed
                if samples:
                    metrics["perf/samples_per_s"] = samples / elapsed
                clock, clock_step, samples = time.perf_counter(), step, 0
                if live is not None:
                    live.step = step  # x axis = optimizer steps, also after a resume
                    for k, v in metrics.items():
                        live.log_metric(k, v)
                    live.next_step()
                bar.set_postfix(loss=f"{metrics['train/loss']:.4g}", refresh=False)
                if status_lines and (time.perf_counter() - last_status >= STATUS_EVERY_S or step == total):
                    last_status = time.perf_counter()
                    print(f"train: step {step}/{total}, epoch {epoch + 1}/{config.epochs}, loss {metrics['train/loss']:.4g}, "
                          f"{metrics['perf/steps_per_s']:.2f} steps/s", file=sys.stderr, flush=True)
            bar.update()

            epoch_done = done == steps_per_epoch
            if epoch_done or step % config.checkpoint_every == 0:
                checkpoint(epoch, done, epoch_done)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook, see the module docstring
        if done != steps_per_epoch:
            raise RuntimeError(
                f"task.batches(epoch={epoch}, start={start}) ended at batch index {done}, but "
                f"task.steps_per_epoch({ctx.world_size}) = {steps_per_epoch}"
            )
    bar.close()

    # 4) the last values, for DVC metrics and the caller, with the task's run-level summary if it has one
    summary = getattr(task, "summary", None)
    result = {**metrics, "step": step, **(summary() if summary is not None else {})}
    if ctx.is_main:
        live.end()
        _atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def training_step(net: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  autocast: Any, grad_clip: float | None) -> tuple[dict[str, Tensor], Tensor | None]:
    """One update of ``net`` on a batch already on its device: forward under ``autocast``, backward
    of the (scaled) loss, the gradients' global norm clipped to ``grad_clip`` (None: not clipped,
    no norm returned), the optimizer's step. Returns the forward's outputs and the norm; a NaN or
    infinite loss raises :class:`NonFiniteLoss` before anything is updated."""
    with autocast:
        out = net(batch)
    # before any update, so the weights and checkpoints stay finite (on a GPU this waits for the forward once a step)
    if not torch.isfinite(out["loss"].detach()):
        bad = [f"{k} = {float(v.detach())}" for k, v in out.items() if v.numel() == 1 and not torch.isfinite(v.detach())]
        raise NonFiniteLoss(f"non-finite loss ({', '.join(bad)})")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    grad_norm = None
    if grad_clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return out, grad_norm


def _open_live(live_dir: Path, resumed: bool, step: int):
    """DVCLive logger; on resume, drop the rows logged after the checkpoint (they are redone)."""
    from dvclive import Live  # imported here: it pulls in dvc, which only rank 0 needs

    # no dvc.yaml, no experiment commit: the pipeline (dvc.yaml at the repo root) owns those
    live = Live(dir=str(live_dir), resume=resumed, save_dvc_exp=False, dvcyaml=None)
    if resumed:
        for tsv in (Path(live.plots_dir) / "metrics").rglob("*.tsv"):
            header, *rows = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
            step_col = header.rstrip("\r\n").split("\t").index("step")
            kept = [r for r in rows if int(r.split("\t")[step_col]) <= step]
            _atomic_write_text(tsv, header + "".join(kept))
    return live


IDENTITY = ("torch_threads", "packages", "device")  # what a CPU run's bit-identity depends on beyond the params


def _warn_if_not_identical(last: Path, stored: dict | None, current: dict) -> None:
    """A resume under another thread count, library versions or device continues the run, but its
    numbers will differ from an uninterrupted run's: say so, naming what changed."""
    if stored is None:  # a checkpoint from before provenance was recorded
        return
    changed = [f"{key} {stored.get(key)} -> {current[key]}" for key in IDENTITY if stored.get(key) != current[key]]
    if changed:
        warnings.warn(f"{last} was written under other conditions ({'; '.join(changed)}): the resumed run will not be "
                      "bit-identical to an uninterrupted one", stacklevel=4)


# the temp files of a save a kill interrupted (atomic_torch_save's, _atomic_write_text's): only these names are removed
PARTIAL_SAVES = (("checkpoints", ".*.pt.*.tmp"), (".", ".*.json.tmp"))


def _remove_partial_saves(out_dir: Path) -> None:
    """Delete what a killed save left half-written in the run folder, saying so (nothing else is touched)."""
    partial = sorted(p for folder, pattern in PARTIAL_SAVES for p in (out_dir / folder).glob(pattern) if p.is_file())
    for path in partial:
        path.unlink()
    if partial:
        print(f"{out_dir}: removed {len(partial)} partial save(s) of an interrupted run: {', '.join(p.name for p in partial)}",
              file=sys.stderr, flush=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _plain(obj: Any) -> Any:
    """JSON-normal form (tuples -> lists, paths -> str) so that it loads with weights_only
    and compares equal after a round trip through a checkpoint."""
    return json.loads(json.dumps(obj, sort_keys=True, default=repr))


def _rng_state(device: torch.device) -> dict[str, Any]:
    # numpy's key array stored as a tensor so that torch.load(weights_only=True) accepts it
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: Any) -> int:
    """Leading size of the first tensor in the batch (0 if none: samples/s is then not logged)."""
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else 1
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    return next((n for n in map(_batch_size, items) if n), 0)
