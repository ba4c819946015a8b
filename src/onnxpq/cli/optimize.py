"""``onnxpq optimize``: run the target's (or a given) pipeline, validate, write model and report."""

from __future__ import annotations

import argparse
import signal
import threading

from onnxpq.cli.base import EXIT_GATE, EXIT_OK, positive, print_summary, progress_enabled, usage_error

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
    opt.add_argument("--no-layer-errors", dest="layer_errors", action="store_false",
                     help="skip measuring each layer's output error for the report's per-layer table")
    add_isolation_arguments(opt)


def add_isolation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--isolate`` and its limits (shared by every command that loads a user's model)."""
    parser.add_argument("--isolate", action="store_true",
                        help="parse and first-run each model in a child process with memory and time limits "
                             "(for untrusted models: a crafted one cannot take this process down)")
    parser.add_argument("--isolate-memory", type=int, metavar="MiB",
                        help="address-space limit of that child [2048 + 4 x the model's size on disk]")
    parser.add_argument("--isolate-timeout", type=float, metavar="S", default=300.0,
                        help="wall-clock limit of that child in seconds [300]")


def check_isolated(args: argparse.Namespace, *models: str) -> None:
    """With ``--isolate``, load and first-run each model in a limited child (raises IsolationError / ModelLoadError)."""
    if not args.isolate:
        return
    from onnxpq.isolation import check_model_isolated

    if args.isolate_memory is not None:
        positive(args.isolate_memory, "--isolate-memory")
    if args.isolate_timeout <= 0:
        raise usage_error(f"--isolate-timeout must be positive, got {args.isolate_timeout:g}")
    for model in models:
        check_model_isolated(model, memory_mib=args.isolate_memory, timeout_s=args.isolate_timeout)


def _file_size_limit_is_an_error() -> None:
    """Under RLIMIT_FSIZE, SIGXFSZ would kill the process silently mid-write; ignored, the write fails with EFBIG,
    which the atomic writer reports in one line and cleans up after."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def run(args: argparse.Namespace) -> int:
    from onnxpq.workflows import optimize

    _file_size_limit_is_an_error()
    check_isolated(args, args.model)

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
        layer_errors=args.layer_errors,
    )
    if not args.quiet:
        report = result.report
        print_summary(report, f"{args.model} -> {args.output}  [target {report['target']['name']}: {report['pipeline']}]")
    return EXIT_OK if result.gate_passed else EXIT_GATE
