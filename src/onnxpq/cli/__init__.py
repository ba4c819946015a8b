"""The ``onnxpq`` command: parses arguments, calls the public API, maps errors to exit codes.

Exit codes: 0 done and every gate held; 1 done but a gate failed (output and
report written); 2 bad input or usage (nothing written, input untouched); 3 an
internal error. Errors are one line on stderr; ``--debug`` adds the traceback.

Each sub-command is a module of this package (see ``onnxpq.cli.base`` for what
it exposes); they are discovered here and listed in ``ORDER``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from onnxpq.cli.base import EXIT_GATE, EXIT_OK, EXIT_USAGE, OnePerLineParser

__all__ = ["EXIT_GATE", "EXIT_OK", "EXIT_USAGE", "main"]

logger = logging.getLogger("onnxpq")

EXIT_INTERNAL = 3


def command_modules() -> list[ModuleType]:
    """The sub-command modules of this package, in ``onnxpq --help`` order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "COMMAND") and hasattr(module, "run"):
            found.append(module)
    return sorted(found, key=lambda m: (getattr(m, "ORDER", 50), m.COMMAND))


def _build_parser(modules: list[ModuleType]) -> argparse.ArgumentParser:
    from onnxpq import __version__

    parser = OnePerLineParser(prog="onnxpq", description="Prune and quantize ONNX models for a target, and prove it.")
    parser.add_argument("--version", action="version", version=f"onnxpq {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OnePerLineParser)
    for module in modules:
        command_parser = sub.add_parser(module.COMMAND, parents=[common], help=module.HELP)
        module.add_arguments(command_parser)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    if getattr(args, "debug", False) or getattr(args, "verbose", 0) >= 2:
        level = logging.DEBUG
    elif getattr(args, "verbose", 0) == 1:
        level = logging.INFO
    elif getattr(args, "quiet", False):
        level = logging.ERROR
    else:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnxpq`` console script; returns the exit code."""
    modules = command_modules()
    parser = _build_parser(modules)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _configure_logging(args)
    from onnxpq.errors import OnnxpqError

    run = {m.COMMAND: m.run for m in modules}[args.command]
    try:
        return run(args)
    except OnnxpqError as exc:
        if args.debug:
            logger.exception("%s", exc)
        print(f"onnxpq: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("onnxpq: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - an internal error: one line unless --debug
        if args.debug:
            raise
        print(f"onnxpq: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
