"""``onnxpq config show [--config F] [optimize options]``: the merged options and where each came from.

Prints what ``onnxpq optimize`` with the same arguments would run with, as
TOML in the config layout (see :mod:`onnxpq.config`), every line commented
with its origin: the command line, the config file and table, or the default.
"""

from __future__ import annotations

import argparse

from onnxpq.cli.base import EXIT_OK

COMMAND = "config"
HELP = "show the options a command would run with (config file + command line)"
ORDER = 85
CONFIG_SECTION = "optimize"


def _optimize_parser() -> argparse.ArgumentParser:
    from onnxpq.cli import optimize

    parser = argparse.ArgumentParser(add_help=False)
    optimize.add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show"], help="show: print the merged options as TOML with their origins")
    from onnxpq.cli import optimize

    optimize.add_arguments(parser)
    for action in parser._actions:  # show needs neither a model nor an output
        if action.required:
            if not action.option_strings and action.nargs is None:
                action.nargs = "?"
            action.required = False


def run(args: argparse.Namespace) -> int:
    from onnxpq.config import config_options, format_merged

    options = config_options(_optimize_parser())
    header = f"onnxpq optimize: merged options (config: {args.config or 'none'})"
    print(format_merged(options, vars(args), getattr(args, "config_sources", {}), header=header), end="")
    return EXIT_OK
