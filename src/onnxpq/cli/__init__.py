"""The ``onnxpq`` command: parses arguments, calls the public API, maps errors to exit codes.

Exit codes: 0 done and every gate held; 1 done but a gate failed (output and
report written); 2 bad input or usage (nothing written, input untouched); 3 an
internal error. Errors are one line on stderr; ``--debug`` adds the traceback.

Each sub-command is a module of this package (see ``onnxpq.cli.base`` for what
it exposes); they are discovered here and listed in ``ORDER``.

A command whose module sets ``CONFIG_SECTION`` (``optimize`` by default) takes
``--config TOML`` (else ``[tool.onnxpq]`` of the nearest ``pyproject.toml``):
see :mod:`onnxpq.config`. Options typed on the command line win; its
required arguments may come from the config instead.
"""

from __future__ import annotations

import argparse
import contextlib
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


#: Commands that take a config without declaring ``CONFIG_SECTION`` in their module.
_CONFIG_SECTIONS = {"optimize": "optimize"}


def config_section(module: ModuleType) -> str | None:
    """The config table a command reads (its module's ``CONFIG_SECTION``), or None when it takes no config."""
    return getattr(module, "CONFIG_SECTION", _CONFIG_SECTIONS.get(module.COMMAND))


def _take_config(command_parser: argparse.ArgumentParser) -> None:
    """Add ``--config``; required arguments become optional here and are checked after the config is merged."""
    if "--config" not in command_parser._option_string_actions:
        command_parser.add_argument(
            "--config", metavar="TOML",
            help="options from this TOML file [the [tool.onnxpq] table of the nearest pyproject.toml]; typed options win",
        )
    required = []
    for action in command_parser._actions:
        if action.required:
            if not action.option_strings and action.nargs is None:
                action.nargs = "?"
            action.required = False
            required.append(action)
    command_parser.config_required = required  # type: ignore[attr-defined]


def _command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _typed_dests(parser: argparse.ArgumentParser, command_parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations the user actually typed: the arguments parsed again with every default suppressed."""
    saved = [(action, action.default) for action in command_parser._actions]
    saved_defaults = dict(command_parser._defaults)
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        command_parser._defaults.clear()
        typed = parser.parse_args(argv)
    finally:
        for action, default in saved:
            action.default = default
        command_parser._defaults.update(saved_defaults)
    return set(vars(typed))


def _apply_config(
    parser: argparse.ArgumentParser, modules: list[ModuleType], module: ModuleType, args: argparse.Namespace,
    argv: list[str],
) -> None:
    """Merge the config into ``args`` (typed > config > default); ``args.config_sources`` says where each came from."""
    from onnxpq.config import (
        ORIGIN_COMMAND_LINE, ORIGIN_DEFAULT, config_options, find_config, read_config, resolve_config,
    )

    parsers = _command_parsers(parser)
    command_parser = parsers[module.COMMAND]
    section = config_section(module)
    by_section = {}
    for other in sorted(modules, key=lambda m: config_section(m) != m.COMMAND):  # a section's own command first
        other_section = config_section(other)
        if other_section is not None and other_section not in by_section:
            by_section[other_section] = config_options(parsers[other.COMMAND])
    path = args.config if args.config is not None else find_config()
    values = {}
    if path is not None:
        config = read_config(path)
        logger.info("config: %s", config.where())
        values = resolve_config(config, section, by_section)
        args.config = str(config.path)
    typed = _typed_dests(parser, command_parser, argv)
    sources = {}
    for key, option in config_options(command_parser).items():
        if option.dest in typed:
            sources[option.dest] = ORIGIN_COMMAND_LINE
        elif key in values:
            setattr(args, option.dest, values[key].value)
            sources[option.dest] = values[key].origin
        else:
            sources[option.dest] = ORIGIN_DEFAULT
    args.config_sources = sources
    missing = [a for a in getattr(command_parser, "config_required", []) if getattr(args, a.dest, None) is None]
    if missing:
        names = ", ".join("/".join(a.option_strings) or a.dest for a in missing)
        command_parser.error(f"the following arguments are required: {names} (on the command line or in --config)")


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
        if config_section(module) is not None:
            _take_config(command_parser)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _configure_logging(args)
    from onnxpq.core.progress import progress_switch

    # -q: no progress bars anywhere, whatever the terminal — for this call only (a build script calling
    # main() twice, or a test run, must not inherit it)
    with progress_switch(False) if getattr(args, "quiet", False) else contextlib.nullcontext():
        return _run_command(parser, modules, args, argv)


def _run_command(parser: argparse.ArgumentParser, modules: list[ModuleType], args: argparse.Namespace, argv: list[str]) -> int:
    """Run the chosen command: an OnnxpqError is its one line and exit code, an internal error one line and
    ``EXIT_INTERNAL`` (re-raised with ``--debug``)."""
    from onnxpq.errors import OnnxpqError

    module = {m.COMMAND: m for m in modules}[args.command]
    try:
        if config_section(module) is not None:
            _apply_config(parser, modules, module, args, argv)
        return module.run(args)
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
