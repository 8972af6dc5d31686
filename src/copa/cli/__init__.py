"""The ``copa`` command line: a thin layer that binds paths and parameters to library calls.

Global options choose the parameters (``--profile``, ``--set key.path=value``); each subcommand
is one stage of the pipeline and is what the Snakemake rules run. The subcommands live by stage
(``data``, ``pretraining``, ``downstream``, ``report``); their default paths are the run layout's
(copa.run_layout), each resolved by a small function of the parsed arguments that the tests call.
"""

from __future__ import annotations

import argparse
import sys

from copa.cli import data, downstream, pretraining, report
from copa.cli.common import USER_ERRORS, is_user_error, load_model_libraries, one_line
from copa.config import DEFAULT_PARAMS_DIR

STAGES = (data, pretraining, downstream, report)  # their subcommands, in this order in --help
MODEL_STAGES = {pretraining.__name__, downstream.__name__}  # every subcommand of these builds a model


class Parser(argparse.ArgumentParser):
    """A parser whose usage errors (an unknown option or choice, a value of the wrong type) are one
    line with exit status 2, as copa's other user errors; its subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="copa", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="scale profile: fixture | demo | paper (default: the one named in params/base.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter, e.g. --set synth.seed=3 (repeatable)")
    parser.add_argument("--params-dir", default=str(DEFAULT_PARAMS_DIR), help="folder holding base.yaml and profiles/ (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="on an error, its traceback instead of the one-line message")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        stage.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.func.__module__ in MODEL_STAGES:
            load_model_libraries()
        return args.func(args)
    except (*USER_ERRORS, OSError) as exc:
        if args.debug or not is_user_error(exc):  # an internal error keeps its traceback
            raise
        print(f"copa {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
