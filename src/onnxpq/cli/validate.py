"""``onnxpq validate``: measure a model against its reference (fidelity, accuracy, latency, size)."""

from __future__ import annotations

import argparse

from onnxpq.cli.base import EXIT_GATE, EXIT_OK, positive, print_summary
from onnxpq.cli.optimize import add_isolation_arguments, check_isolated

COMMAND = "validate"
HELP = "measure a model against its reference"
ORDER = 20


def add_arguments(val: argparse.ArgumentParser) -> None:
    val.add_argument("model", help="the model to judge")
    val.add_argument("--reference", required=True, help="the reference model")
    val.add_argument("-t", "--target", default="cpu", help="target name or TOML path [cpu]")
    val.add_argument("--data", help=".npz data (+ optional 'labels')")
    val.add_argument("--report", help="write the JSON report here")
    val.add_argument("--html", help="write the HTML report here")
    val.add_argument("--max-accuracy-drop", type=float, help="gate: largest allowed absolute accuracy drop")
    val.add_argument("--latency-runs", type=int, default=50, help="timed runs per model [50]")
    val.add_argument("--latency-batch", type=int, default=1, help="samples per timed run (models with a batch axis) [1]")
    val.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency [1]")
    add_isolation_arguments(val)


def run(args: argparse.Namespace) -> int:
    from onnxpq.workflows import validate

    check_isolated(args, args.reference, args.model)

    result = validate(
        args.model,
        args.reference,
        target=args.target,
        data=args.data,
        report=args.report,
        html=args.html,
        max_accuracy_drop=args.max_accuracy_drop,
        latency_runs=positive(args.latency_runs, "--latency-runs"),
        latency_batch=positive(args.latency_batch, "--latency-batch"),
        threads=positive(args.threads, "--threads"),
    )
    if not args.quiet:
        print_summary(result.report, f"{args.model} against {args.reference}")
    return EXIT_OK if result.gate_passed else EXIT_GATE
