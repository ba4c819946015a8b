"""``onnxpq passes [show NAME]``: the registered passes, or one pass's documentation and options."""

from __future__ import annotations

import argparse
import inspect
import sys

from onnxpq.cli.base import EXIT_OK, usage_error

COMMAND = "passes"
HELP = "list passes, or show one"
ORDER = 70


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["show"], help="show one pass")
    parser.add_argument("name", nargs="?", help="pass name")


def run(args: argparse.Namespace) -> int:
    from onnxpq.core.pass_base import option_specs
    from onnxpq.core.pipeline_text import format_value
    from onnxpq.core.registry import get_pass_class, registered_passes

    if args.action == "show":
        if not args.name:
            raise usage_error("passes show needs a pass name")
        cls = get_pass_class(args.name)
        print(f"{cls.name} ({'exact' if cls.exact else 'lossy'})")
        print()
        print(inspect.getdoc(cls) or "")
        module_doc = inspect.getdoc(sys.modules[cls.__module__])
        if module_doc:
            print()
            print(module_doc)
        specs = option_specs(cls)
        print()
        print("options:" if specs else "options: none")
        for spec in specs:
            print(f"  {spec.name}: {spec.type_text} = {format_value(spec.default)}")
        return EXIT_OK
    for name, cls in registered_passes().items():
        print(f"{name:28} {'exact' if cls.exact else 'lossy'}  {cls.summary()}")
    return EXIT_OK
