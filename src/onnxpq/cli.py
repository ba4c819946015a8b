"""The ``onnxpq`` command: parses arguments, calls the public API, maps errors to exit codes.

Exit codes: 0 done and every gate held; 1 done but a gate failed (output and
report written); 2 bad input or usage (nothing written, input untouched).
Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

logger = logging.getLogger("onnxpq")

EXIT_OK, EXIT_GATE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its message to one line plus usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"onnxpq: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _build_parser() -> argparse.ArgumentParser:
    from onnxpq import __version__

    parser = _Parser(prog="onnxpq", description="Prune and quantize ONNX models for a target, and prove it.")
    parser.add_argument("--version", action="version", version=f"onnxpq {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    common.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    opt = sub.add_parser("optimize", parents=[common], help="optimize a model for a target")
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

    val = sub.add_parser("validate", parents=[common], help="measure a model against its reference")
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

    passes = sub.add_parser("passes", parents=[common], help="list passes, or show one")
    passes.add_argument("action", nargs="?", choices=["show"], help="show one pass")
    passes.add_argument("name", nargs="?", help="pass name")

    targets = sub.add_parser("targets", parents=[common], help="list targets, or show one")
    targets.add_argument("action", nargs="?", choices=["show"], help="show one target")
    targets.add_argument("name", nargs="?", help="target name or TOML path")

    demo = sub.add_parser("demo", parents=[common], help="optimize the embedded digits CNN for cpu and print the table")
    demo.add_argument("--out-dir", default=".", help="where to write demo-report.json/.html and the model [.]")
    demo.add_argument("-t", "--target", default="cpu", help="target [cpu]")
    demo.add_argument("--latency-runs", type=int, default=100, help="timed runs per model [100]")
    demo.add_argument("--latency-batch", type=int, default=64, help="digits per timed run [64]")
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


def _progress_enabled(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty() and not os.environ.get("CI")


def _print_summary(report: dict[str, Any], header: str) -> None:
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


def _cmd_optimize(args: argparse.Namespace) -> int:
    from onnxpq.workflows import optimize

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
        latency_runs=_positive(args.latency_runs, "--latency-runs"),
        latency_batch=_positive(args.latency_batch, "--latency-batch"),
        threads=_positive(args.threads, "--threads"),
        progress=_progress_enabled(args),
    )
    if not args.quiet:
        report = result.report
        _print_summary(report, f"{args.model} -> {args.output}  [target {report['target']['name']}: {report['pipeline']}]")
    return EXIT_OK if result.gate_passed else EXIT_GATE


def _cmd_validate(args: argparse.Namespace) -> int:
    from onnxpq.workflows import validate

    result = validate(
        args.model,
        args.reference,
        target=args.target,
        data=args.data,
        report=args.report,
        html=args.html,
        max_accuracy_drop=args.max_accuracy_drop,
        latency_runs=_positive(args.latency_runs, "--latency-runs"),
        latency_batch=_positive(args.latency_batch, "--latency-batch"),
        threads=_positive(args.threads, "--threads"),
    )
    if not args.quiet:
        _print_summary(result.report, f"{args.model} against {args.reference}")
    return EXIT_OK if result.gate_passed else EXIT_GATE


def _cmd_passes(args: argparse.Namespace) -> int:
    from onnxpq.core.pass_base import option_specs
    from onnxpq.core.pipeline_text import format_value
    from onnxpq.core.registry import get_pass_class, registered_passes

    if args.action == "show":
        if not args.name:
            raise _usage("passes show needs a pass name")
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


def _cmd_targets(args: argparse.Namespace) -> int:
    from onnxpq.targets.profile import builtin_targets, load_target

    if args.action == "show":
        if not args.name:
            raise _usage("targets show needs a target name or path")
        print(load_target(args.name).to_toml(), end="")
        return EXIT_OK
    for name in builtin_targets():
        target = load_target(name)
        print(f"{name:8} {target.description}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from onnxpq.demo import run_demo

    report = run_demo(
        Path(args.out_dir),
        target=args.target,
        latency_runs=_positive(args.latency_runs, "--latency-runs"),
        latency_batch=_positive(args.latency_batch, "--latency-batch"),
        progress=_progress_enabled(args),
    )
    if not args.quiet:
        _print_summary(report, f"onnxpq demo: digits CNN (embedded, {report['data']['samples']} held-out samples) "
                               f"on target {report['target']['name']}")
        print(f"wrote {report['output']}, {Path(args.out_dir) / 'demo-report.json'}, "
              f"{Path(args.out_dir) / 'demo-report.html'}")
    return EXIT_OK if report["gate"]["passed"] else EXIT_GATE


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise _usage(f"{flag} must be at least 1, got {value}")
    return value


def _usage(message: str) -> Exception:
    from onnxpq.errors import OnnxpqError

    return OnnxpqError(message)


_COMMANDS = {
    "optimize": _cmd_optimize,
    "validate": _cmd_validate,
    "passes": _cmd_passes,
    "targets": _cmd_targets,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnxpq`` console script; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _configure_logging(args)
    from onnxpq.errors import OnnxpqError

    try:
        return _COMMANDS[args.command](args)
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
        return 3


if __name__ == "__main__":
    sys.exit(main())
