"""``onnxpq optimize``: run the target's (or a given) pipeline, validate, write model and report."""

from __future__ import annotations

import argparse
import signal
import threading

from onnxpq.cli.base import EXIT_GATE, EXIT_OK, positive, print_summary, progress_enabled

COMMAND = "optimize"
HELP = "optimize a model for a target"
ORDER = 10


def add_arguments(opt: argparse.ArgumentParser) -> None:
    opt.add_argument("model", help="input .onnx (never modified)")
    opt.add_argument("-t", "--target", default="cpu", help="built-in target (cpu, gpu, vbit) or a TOML path [cpu]")
    opt.add_argument("-o", "--output", required=True, help="output .onnx")
    opt.add_argument("--pipeline", help="pipeline text, e.g. 'fold-batchnorm,eliminate-dead' [the target's]")
    opt.add_argument("--data", help=".npz with arrays named after the inputs (+ optional 'labels')")
    opt.add_argument("--calibration", help=".npz for calibration [--data]")
    opt.add_argument("--report", help="write the JSON report here")
    opt.add_argument("--html", help="write the HTML report here")
    opt.add_argument("--max-accuracy-drop", type=float, help="gate: largest allowed absolute accuracy drop (0.01 = 1 pt)")
    opt.add_argument("--dump-on-failure", metavar="DIR", help="write a reproducer here when a pass fails")
    opt.add_argument("--latency-runs", type=int, default=50, help="timed runs per model [50]")
    opt.add_argument("--latency-batch", type=int, default=1, help="samples per timed run (models with a batch axis) [1]")
    opt.add_argument("--threads", type=int, default=1, help="onnxruntime threads for latency [1]")
    opt.add_argument("--no-payoff", dest="payoff", action="store_false", default=None,
                     help="keep every quantized node even where its integer kernel is measured slower than float "
                          "(the payoff step's choice otherwise depends on timing)")
    opt.add_argument("--nonfinite-weights", choices=("refuse", "warn"), default="refuse",
                     help="a weight holding NaN/Inf: refuse the model (exit 2, naming the tensor) or warn and go on [refuse]")


def _file_size_limit_is_an_error() -> None:
    """Under RLIMIT_FSIZE, SIGXFSZ would kill the process silently mid-write; ignored, the write fails with EFBIG,
    which the atomic writer reports in one line and cleans up after."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def run(args: argparse.Namespace) -> int:
    from onnxpq.workflows import optimize

    _file_size_limit_is_an_error()

    result = optimize(
        args.model,
        args.output,
        target=args.target,
        pipeline=args.pipeline,
        data=args.data,
        calibration=args.calibration,
        report=args.report,
        html=args.html,
        max_accuracy_drop=args.max_accuracy_drop,
        dump_on_failure=args.dump_on_failure,
        latency_runs=positive(args.latency_runs, "--latency-runs"),
        latency_batch=positive(args.latency_batch, "--latency-batch"),
        threads=positive(args.threads, "--threads"),
        progress=progress_enabled(args),
        payoff=args.payoff,
        nonfinite_weights=args.nonfinite_weights,
    )
    if not args.quiet:
        report = result.report
        print_summary(report, f"{args.model} -> {args.output}  [target {report['target']['name']}: {report['pipeline']}]")
    return EXIT_OK if result.gate_passed else EXIT_GATE
