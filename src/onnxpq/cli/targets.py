"""``onnxpq targets [show NAME|PATH]``: the built-in target profiles, or one profile as TOML."""

from __future__ import annotations

import argparse

from onnxpq.cli.base import EXIT_OK, usage_error

COMMAND = "targets"
HELP = "list targets, or show one"
ORDER = 80


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["show"], help="show one target")
    parser.add_argument("name", nargs="?", help="target name or TOML path")


def run(args: argparse.Namespace) -> int:
    from onnxpq.targets.profile import builtin_targets, load_target, plugin_targets

    if args.action == "show":
        if not args.name:
            raise usage_error("targets show needs a target name or path")
        print(load_target(args.name).to_toml(), end="")
        return EXIT_OK
    for name in builtin_targets():
        target = load_target(name)
        print(f"{name:8} {target.description}")
    for name, target in sorted(plugin_targets().items()):
        print(f"{name:8} {target.description}  [plugin]")
    return EXIT_OK
