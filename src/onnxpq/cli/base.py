"""Pieces every ``onnxpq`` sub-command shares: exit codes, the one-line-error parser, the summary table.

A command lives in its own module of this package and exposes ``COMMAND`` (its
name), ``HELP`` (one line), ``ORDER`` (position in ``onnxpq --help``),
``add_arguments(parser)`` and ``run(args) -> int``; the package finds it by itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = [
    "EXIT_GATE",
    "EXIT_OK",
    "EXIT_USAGE",
    "OnePerLineParser",
    "positive",
    "print_summary",
    "progress_enabled",
    "usage_error",
]

EXIT_OK, EXIT_GATE, EXIT_USAGE = 0, 1, 2


class OnePerLineParser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message to one line plus usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"onnxpq: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def progress_enabled(args: argparse.Namespace) -> bool:
    """A progress line only for a person at a terminal: never with -q, in CI or into a pipe."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty() and not os.environ.get("CI")


def positive(value: int, flag: str) -> int:
    if value < 1:
        raise usage_error(f"{flag} must be at least 1, got {value}")
    return value


def usage_error(message: str) -> Exception:
    from onnxpq.errors import OnnxpqError

    return OnnxpqError(message)


def print_summary(report: dict[str, Any], header: str) -> None:
    from onnxpq.report.summary import format_table, summary_rows

    print(header)
    print(format_table(summary_rows(report), ("", "baseline", "optimized", "change")))
    fidelity = report["fidelity"]
    sqnr = "identical" if fidelity.get("identical") else (
        f"{fidelity['sqnr_db']:.1f} dB" if fidelity["sqnr_db"] is not None else "—"
    )
    top1 = fidelity["top1_agreement"]
    print(f"fidelity: SQNR {sqnr}, top-1 agreement {'—' if top1 is None else f'{top1:.2%}'}, "
          f"max |error| {fidelity['max_abs_error']:.3g}")
    print(f"latency: {report['optimized']['latency_ms']['method']}")
    gate = report["gate"]
    if gate["max_accuracy_drop"] is not None:
        print(f"gate: {'passed' if gate['passed'] else 'FAILED: ' + '; '.join(gate['reasons'])}")
