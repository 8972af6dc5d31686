"""What the subcommands share: the parameters of the global options, the user errors `copa`
reports as one line, and a run folder's architecture."""

from __future__ import annotations

import argparse
import errno
import gc
import importlib
import sys
from pathlib import Path
from typing import Callable, get_args

from copa.config import Params, ParamsError, UserError, load_params, overrides_of
from copa.data.formats.records import FormatError
from copa.run_layout import RunLayout
from copa.train.architectures import ARCHITECTURES, Architecture, architecture, architecture_of_run

# The layout of no particular profile, whose paths the --help texts show as defaults.
HELP_LAYOUT = RunLayout("<profile>")


class CommandError(Exception):
    """A user error a subcommand met in a library call (no CUDA, a result file that does not parse):
    ``main`` reports it as it reports the others."""


# What ``main`` reports as one line and exit status 2 (``--debug``: the traceback instead).
USER_ERRORS = (ParamsError, FormatError, FileNotFoundError, FileExistsError, UserError, CommandError)


# A write that fails for want of space names no file (the open succeeded): the disk is the user's to fix.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# What every subcommand of the pretraining and downstream stages imports: torch, timm (the ViT), transformers (the BERT parts).
MODEL_LIBRARIES = ("torch", "timm", "transformers.models.bert.modeling_bert")


def load_model_libraries() -> None:
    """Import MODEL_LIBRARIES with the garbage collector off, then freeze what they made.

    Their ~690,000 objects (modules, classes, functions) live as long as the process and are never
    garbage. With the collector on, importing them runs a full collection each time the heap has
    grown by a quarter, and every later full collection (the memory measurement calls gc.collect()
    once a model) walks them all again; frozen, a collection walks only what the command allocates.
    Measured on 2 cores: importing them and a fine-tune's modules, 7.3-8.1 CPU-s with the collector on,
    6.1-6.3 this way; the fixture's `efficiency --grid-costs` 35.8 -> 26.4 CPU-s, the same records.
    A process that has imported torch before (``main`` called from Python, e.g. by most tests) is left
    as it is: freezing there would also freeze whatever it holds, garbage included."""
    if "torch" in sys.modules:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in MODEL_LIBRARIES:
            importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def is_user_error(exc: BaseException) -> bool:
    """One of USER_ERRORS, or an OSError on a named path (a folder given where a file goes, a file
    where a folder goes, no permission to write) or of a full disk: the user's to fix."""
    return isinstance(exc, USER_ERRORS) or (isinstance(exc, OSError) and (exc.filename is not None or exc.errno in DISK_FULL))


def one_line(exc: BaseException) -> str:
    """The message ``main`` prints for a user error: one line (YAML errors span several); an
    OSError as ``<path>: <what the system said>``."""
    if isinstance(exc, OSError) and exc.strerror:
        if exc.filename is None:  # a full disk, met while writing
            return f"{exc.strerror} while writing an output: free some space and run the command again"
        paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        return f"{paths}: {exc.strerror}"
    return " ".join(line.strip() for line in str(exc).splitlines())


def in_range(annotated: object) -> Callable[[str], float]:
    """An argparse ``type``: a number of the parameter type ``annotated`` (copa.config.ranges, e.g.
    KeepRatio), refused as a usage error outside its range."""
    kind, bounds = get_args(annotated)

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not bounds.admits(value):
            raise argparse.ArgumentTypeError(f"{text} is not {bounds.words(kind)}")
        return value

    return parse


def profile_params(args: argparse.Namespace) -> Params:
    """The parameters of --profile, --set and --params-dir."""
    params = load_params(args.profile, args.set, args.params_dir)
    architecture(params)  # a registered one, whose selection fits: refused before any work
    return params


def refuse_unread_overrides(args: argparse.Namespace, reads: tuple[str, ...], source: str) -> None:
    """One clear error for a ``--set`` the command would ignore: it reads only the sections ``reads``
    of the current parameters, everything else from ``source`` (a run's stored parameters)."""
    unread = [o for o in args.set if o not in overrides_of(args.set, reads)]
    if unread:
        raise ParamsError(f"--set {unread[0]}: not read by this command, which takes everything but {', '.join(reads)} "
                          f"from {source}")


def path_or(given: str | None, default: Path) -> Path:
    """An output path: the one given on the command line, else the layout's."""
    return Path(given) if given else default


def run_architecture(run: Path) -> Architecture:
    """A run folder's architecture, from its resolved parameters; a folder without them is left to
    the loaders of the architecture its name says, whose errors name what is missing."""
    from copa.train.engine import RESOLVED_FILE
    from copa.train.pretrain import run_params

    return architecture(run_params(run)) if (run / RESOLVED_FILE).is_file() else architecture_of_run(run.name)


def run_head(run: Path, task: str):
    """The head (copa.tasks.registry.HEADS) of ``task`` for the architecture of ``run`` (a
    pretraining or fine-tuning run folder); refused where it has none."""
    from copa.tasks.registry import head

    return head(run_architecture(run).name, task, run)


def require_instruments(run: Path, command: str) -> None:
    """Refuse a run whose architecture the probes of ``copa <command>`` do not read."""
    arch = run_architecture(run)
    if not arch.instruments:
        readable = ", ".join(a.name for a in ARCHITECTURES.values() if a.instruments)
        raise ParamsError(f"{run} is a {arch.name} run: `copa {command}` reads runs of the architectures {readable} only")
