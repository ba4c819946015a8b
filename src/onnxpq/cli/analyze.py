"""``onnxpq analyze``: per layer, does pruning or quantization keep more of the weights at equal compression?"""

from __future__ import annotations

import argparse

from onnxpq.cli.base import EXIT_OK, usage_error

COMMAND = "analyze"
HELP = "per-layer weight statistics: quantization vs pruning SQNR at equal compression"
ORDER = 30

_NAME_WIDTH = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the ONNX model to analyse (read only)")
    parser.add_argument(
        "--granularity", choices=("per-tensor", "per-channel"), default="per-tensor",
        help="quantization scale per tensor or per output channel [per-tensor]",
    )
    parser.add_argument("--bits", default="2,3,4,5,6,7,8", help="bit widths to compare, comma-separated [2,3,4,5,6,7,8]")
    parser.add_argument("--json", dest="json_path", metavar="OUT", help="write the full analysis (onnxpq.analyze/1) here")


def _parse_bits(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise usage_error(f"--bits must be comma-separated integers, got {text!r}") from None


def _short(name: str) -> str:
    return name if len(name) <= _NAME_WIDTH else "…" + name[-(_NAME_WIDTH - 1):]


def _db(value: float) -> str:
    return "exact" if value == float("inf") else f"{value:.1f}"


def _shown_bits(bits: tuple[int, ...]) -> list[int]:
    preferred = [b for b in (2, 4, 8) if b in bits]
    return preferred or sorted({bits[0], bits[-1]})


def run(args: argparse.Namespace) -> int:
    from onnxpq.analysis.weights_report import analyze
    from onnxpq.report.summary import format_table

    analysis = analyze(args.model, granularity=args.granularity, bits=_parse_bits(args.bits), json_path=args.json_path)
    if args.quiet:
        return EXIT_OK
    shown = _shown_bits(analysis.bits)
    header = ("layer", "op", "params", "kurt", *(f"int{b}/prune{1 - b / 16:.1%}".replace(".0%", "%") for b in shown), "winner (FP16 pairing)")
    rows = []
    for weight in analysis.weights:
        by_bits = {c.bits: c for c in weight.result.comparisons}
        cells = [
            f"{_db(by_bits[b].quantize_sqnr_db)}/{_db(by_bits[b].prune_sqnr_db_fp16)}" if b in by_bits else "—"
            for b in shown
        ]
        rows.append((
            _short(weight.facts.node), weight.facts.op_type, f"{weight.facts.params:,}",
            f"{weight.result.excess_kurtosis:.1f}", *cells, weight.short_verdict(),
        ))
    print(f"{analysis.model}: {len(analysis.weights)} weight tensors, {analysis.granularity} quantization "
          f"(MSE-optimal clipping) vs magnitude pruning; SQNR in dB, quantized/pruned at equal size against FP16")
    if rows:
        print(format_table(rows, header))
    for name, _, reason in analysis.skipped:
        print(f"skipped {name}: {reason}")
    print(analysis.summary())
    if args.json_path:
        print(f"written: {args.json_path}")
    return EXIT_OK
