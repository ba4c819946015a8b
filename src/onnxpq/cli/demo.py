"""``onnxpq demo``: optimize the embedded digits CNN for a target and print the before/after table."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxpq.cli.base import EXIT_GATE, EXIT_OK, positive, print_summary, progress_enabled

COMMAND = "demo"
HELP = "optimize the embedded digits CNN for cpu and print the table"
ORDER = 90


def add_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--out-dir", default=".", help="where to write demo-report.json/.html and the model [.]")
    demo.add_argument("-t", "--target", default="cpu", help="target [cpu]")
    demo.add_argument("--latency-runs", type=int, default=100, help="timed runs per model [100]")
    demo.add_argument("--latency-batch", type=int, default=64, help="digits per timed run [64]")


def run(args: argparse.Namespace) -> int:
    from onnxpq.demo import run_demo

    report = run_demo(
        Path(args.out_dir),
        target=args.target,
        latency_runs=positive(args.latency_runs, "--latency-runs"),
        latency_batch=positive(args.latency_batch, "--latency-batch"),
        progress=progress_enabled(args),
    )
    if not args.quiet:
        print_summary(report, f"onnxpq demo: digits CNN (embedded, {report['data']['samples']} held-out samples) "
                              f"on target {report['target']['name']}")
        print(f"wrote {report['output']}, {Path(args.out_dir) / 'demo-report.json'}, "
              f"{Path(args.out_dir) / 'demo-report.html'}")
    return EXIT_OK if report["gate"]["passed"] else EXIT_GATE
