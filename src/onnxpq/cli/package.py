"""``onnxpq package``: optimize, tune the session and write a deployment bundle; ``--verify`` re-checks one.

Exit codes: 0 done (every gate held / the bundle verified); 1 a gate failed
(the bundle is still written) or the verified bundle's model no longer
reproduces its recorded outputs or misses the accuracy gate; 2 bad input, or
a bundle with a missing or modified file (named).
"""

from __future__ import annotations

import argparse
import json

from onnxpq.cli.base import EXIT_GATE, EXIT_OK, positive, print_summary, progress_enabled, usage_error

COMMAND = "package"
HELP = "optimize into a deployment bundle (model, manifest, recipe, reports); --verify checks one"
ORDER = 15
CONFIG_SECTION = "package"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="input .onnx (never modified)")
    parser.add_argument("-t", "--target", default="cpu", help="target name or TOML path [cpu]")
    parser.add_argument("-o", "--output", help="the bundle folder (must not exist or be empty, unless --force)")
    parser.add_argument("--pipeline", help="pipeline text [the target's]")
    parser.add_argument("--data", help=".npz with arrays named after the inputs (+ optional 'labels')")
    parser.add_argument("--calibration", help=".npz for calibration [a split of --data]")
    parser.add_argument("--max-accuracy-drop", type=float, help="gate: largest allowed absolute accuracy drop")
    parser.add_argument("--latency-runs", type=int, default=50, help="timed runs per model [50]")
    parser.add_argument("--latency-batch", type=int, default=1, help="samples per timed run (and for tuning) [1]")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the latency figures [1]")
    parser.add_argument("--tune-budget", type=float, default=10.0, help="seconds for session tuning [10]")
    parser.add_argument("--no-tune", dest="tune", action="store_false", help="no session tuning: default recipe")
    parser.add_argument("--no-payoff", dest="payoff", action="store_false", default=None,
                        help="keep every quantized node even where its integer kernel is measured slower than float")
    parser.add_argument("--include-reference", action="store_true",
                        help="copy the input model into the bundle (reference/) for fidelity checks by --verify")
    parser.add_argument("--force", action="store_true", help="replace a non-empty bundle folder")
    parser.add_argument("--verify", metavar="BUNDLE", help="re-check this bundle instead of writing one")
    parser.add_argument("--reference", help="with --verify: the original model, for fidelity [the bundle's copy]")
    parser.add_argument("--json", action="store_true", help="with --verify: print the result as JSON")


def _verify(args: argparse.Namespace) -> int:
    from onnxpq.bundle import verify_bundle

    result = verify_bundle(args.verify, reference=args.reference, data=args.data,
                           max_accuracy_drop=args.max_accuracy_drop)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        print(f"{result.path}: {len(result.checked_files)} files, SHA-256 match")
        for rel in result.extra_files:
            print(f"  not in the manifest: {rel}")
        golden = result.golden
        if golden.get("checked"):
            print(f"golden outputs: {'reproduced' if golden['passed'] else 'DIFFER'} "
                  f"({golden['samples']} samples, max |error| {golden['max_abs_error']:.3g})")
        else:
            print(f"golden outputs: not checked ({golden.get('reason')})")
        if result.fidelity is not None:
            sqnr = "identical" if result.fidelity.get("identical") else f"{result.fidelity['sqnr_db']:.1f} dB"
            print(f"fidelity vs {result.reference}: SQNR {sqnr}, max |error| {result.fidelity['max_abs_error']:.3g}")
        else:
            print("fidelity: no reference (package with --include-reference, or give --reference)")
        if result.accuracy is not None:
            print(f"accuracy: {json.dumps(result.accuracy)}")
        print("verify: passed" if result.passed else "verify: FAILED: " + "; ".join(result.problems))
    return EXIT_OK if result.passed else EXIT_GATE


def run(args: argparse.Namespace) -> int:
    if args.verify is not None:
        if args.model is not None or args.output is not None:
            raise usage_error("--verify BUNDLE takes no model and no -o")
        return _verify(args)
    if args.model is None or args.output is None:
        raise usage_error("package needs a MODEL and -o BUNDLE_FOLDER (or --verify BUNDLE)")
    from onnxpq.bundle import package

    result = package(
        args.model,
        args.output,
        target=args.target,
        pipeline=args.pipeline,
        data=args.data,
        calibration=args.calibration,
        max_accuracy_drop=args.max_accuracy_drop,
        latency_runs=positive(args.latency_runs, "--latency-runs"),
        latency_batch=positive(args.latency_batch, "--latency-batch"),
        threads=positive(args.threads, "--threads"),
        tune=args.tune,
        tune_budget=args.tune_budget,
        include_reference=args.include_reference,
        force=args.force,
        progress=progress_enabled(args),
        payoff=args.payoff,
    )
    if not args.quiet:
        report = result.report
        print_summary(report, f"{args.model} -> {args.output}/  [target {report['target']['name']}: {report['pipeline']}]")
        tuning = report["session_tuning"]
        if tuning["measured"]:
            best = tuning["best_session_options"]
            print(f"session: {best['intra_op_num_threads']} thread(s), {best['graph_optimization_level']}, "
                  f"{best['execution_mode']}{' ' + json.dumps(best['config_entries']) if best['config_entries'] else ''}"
                  f" ({len(tuning['table'])} settings measured in {tuning['seconds']:.1f} s; "
                  f"{tuning['speedup']:.2f}x over the defaults)")
            for note in tuning["recommendations"]:
                print(f"recommendation: {note}")
        else:
            print(f"session: not tuned ({tuning['reason']})")
        print(f"bundle: {len(result.manifest['files']) + 1} files, manifest {args.output}/manifest.json")
    return EXIT_OK if result.gate_passed else EXIT_GATE
