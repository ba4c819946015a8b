"""``onnxpq explore``: per-layer sensitivity, planner, Pareto frontier; writes frontier.json, report.html, best.onnx."""

from __future__ import annotations

import argparse
import sys

from onnxpq.cli.base import EXIT_GATE, EXIT_OK, positive, progress_enabled

COMMAND = "explore"
HELP = "search per-layer prune/quantize settings; write the Pareto frontier and the best model"
ORDER = 15


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="input .onnx (never modified)")
    parser.add_argument("-t", "--target", default="cpu", help="built-in target (cpu, gpu, vbit) or a TOML path [cpu]")
    parser.add_argument("-o", "--out-dir", required=True, help="output folder (resumed when it holds an earlier run)")
    parser.add_argument("--data", help=".npz with arrays named after the inputs (+ optional 'labels')")
    parser.add_argument("--calibration", help=".npz for calibration [a seeded quarter of --data]")
    gate = parser.add_mutually_exclusive_group()
    gate.add_argument("--max-accuracy-drop", type=float, help="choose the cheapest configuration within this drop (0.01 = 1 pt) [0.01]")
    gate.add_argument("--budget", type=float, help="choose the most accurate configuration within this fraction of the float model's cost")
    parser.add_argument("--executor", choices=("local", "ray"), default="local", help="where evaluations run [local]")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (ray: CPUs of a new local cluster) [1]")
    parser.add_argument("--address", help="Ray cluster address (with --executor ray), e.g. 10.0.0.5:6379")
    parser.add_argument("--points", type=int, default=10, help="cost budgets the planner sweeps [10]")
    parser.add_argument("--weight-method", choices=("rtn", "gptq"), help="quantize-weights method [the target's]")
    parser.add_argument("--sensitivity-samples", type=int, default=64, help="calibration samples per sensitivity [64]")
    parser.add_argument("--latency-runs", type=int, default=30, help="interleaved timed runs per model [30]")
    parser.add_argument("--latency-batch", type=int, default=1, help="samples per timed run [1]")


def _progress_line(stage: str, done: int, total: int) -> None:
    sys.stderr.write(f"\rexplore: {stage} {done}/{total}   ")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from onnxpq.errors import OnnxpqError
    from onnxpq.search.explore import explore

    if args.address and args.executor != "ray":
        raise OnnxpqError("--address needs --executor ray")
    result = explore(
        args.model,
        args.out_dir,
        target=args.target,
        data=args.data,
        calibration=args.calibration,
        max_accuracy_drop=args.max_accuracy_drop,
        budget=args.budget,
        executor=args.executor,
        workers=positive(args.workers, "--workers"),
        address=args.address,
        points=args.points,
        weight_method=args.weight_method,
        sensitivity_samples=positive(args.sensitivity_samples, "--sensitivity-samples"),
        latency_runs=positive(args.latency_runs, "--latency-runs"),
        latency_batch=positive(args.latency_batch, "--latency-batch"),
        progress=_progress_line if progress_enabled(args) else None,
    )
    doc = result.document
    if not args.quiet:
        best = result.best
        primary = doc["primary_cost"]
        frontier = sum(1 for p in doc["points"] if p["on_frontier"].get(primary))
        print(f"{len(doc['points'])} configurations evaluated, {frontier} on the {primary} frontier -> {args.out_dir}/frontier.json")
        if best is not None:
            print(f"best: {best['id']}  {doc['quality_measure']} {best['quality']:.4f} (drop {best['drop']:+.4f}), "
                  f"{primary} {best['costs'][primary]:.4g}  -> {args.out_dir}/best.onnx")
            print(f"pipeline: {best['pipeline']}")
        print(f"gate: {'met' if doc['gate']['passed'] else 'NOT MET: ' + str(doc['gate']['reason'])}")
    return EXIT_OK if result.gate_passed else EXIT_GATE
