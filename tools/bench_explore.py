"""The explored Pareto frontier against uniform baselines, per model and target; writes its section of BENCHMARKS.md.

For every model (``--models``: digits, mnist, mobilenetv2) and target (``--targets``:
cpu, vbit) this runs ``onnxpq.explore`` (sensitivity → planner → evaluated
configurations → frontier) into ``--work/<model>-<target>`` (resumable: a
re-run re-evaluates nothing already cached there; ``--fresh`` starts over) with
the uniform baselines explore always evaluates —

* ``target-default``: the target's default pipeline (cpu: int8 static U8S8 QDQ;
  vbit: 4-bit GPTQ weights), i.e. uniform int8 / uniform 4-bit on vbit;
* ``uniform-w4``: ``quantize-weights{bits=4}`` on every layer;
* ``uniform-prune50``: ``prune-channels{ratio=0.5}`` (with reconstruction);

plus ``ort-static-u8s8``: ``onnxruntime.quantization.quantize_static`` (QDQ,
per channel, MinMax, QUInt8 activations / QInt8 weights — the x86 VNNI
configuration; after ``quant_pre_process``) on the same calibration samples.

Costs: on ``cpu`` the frontier's cost is *measured* latency — every evaluated
model in one onnxruntime process, 1 intra-op thread, interleaved round-robin
(A B C … per round, ``--latency-runs`` rounds), medians of each time relative
to its round (the drift a round shares cancels), identical pipelines timed
once — at the model's batch (``LATENCY_BATCH``); on ``vbit`` it is
bit-operations (the target's cost model; the hardware is not here). Quality: task accuracy with labels (digits,
mnist), else top-1 agreement with the float model (mobilenetv2: 64 test
images, so one image is 1.6 points).

For each baseline the table says whether a frontier point is at least as
accurate at the baseline's cost (``acc@cost``) and at most as costly at its
accuracy (``cost@acc``); "dominates" = both, strictly; "within τ" = the same
with the baseline's latency widened by the measurement's tolerance τ (stated
per block, from the spread of the interleaved rounds; explore's
``latency_noise``) — a tie the timing cannot resolve, shown beside the strict
verdict, never instead of it. A Pareto plot per model × target
is saved under ``docs/bench_explore/`` beside ``--benchmarks`` and linked. The section of BENCHMARKS.md
between ``<!-- bench_explore:start -->`` and ``<!-- bench_explore:end -->`` is
replaced (other sections are kept).

Run: ``.venv/bin/python tools/bench_explore.py`` (all) or
``--models mnist --targets cpu``; on a quiet machine for latency figures that
mean something.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tools"))

from bench_machine import machine_lines  # noqa: E402
from bench_sections import replace_section  # noqa: E402

START_MARKER, END_MARKER = "<!-- bench_explore:start -->", "<!-- bench_explore:end -->"
MODELS_DIR = Path(os.environ.get("ONNXPQ_MODELS", Path.home() / ".cache" / "onnxpq" / "models"))
DATA_DIR = REPO_ROOT / "src" / "onnxpq" / "data"
#: Samples per timed run on cpu: at batch 1 the two small CNNs are dominated by per-kernel overhead.
LATENCY_BATCH = {"digits": 64, "mnist": 8, "mobilenetv2": 1}
#: Per model (or ``model-target``): cheaper settings where evaluations are dear (printed in each block).
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"sensitivity_samples": 64},
    "mnist": {"sensitivity_samples": 64, "calibration_samples": 128, "additivity_check": 12},
    "mnist-vbit": {"sensitivity_samples": 64, "calibration_samples": 128, "weight_bits": (2, 3, 4, 6, 8),
                   "weight_method": "rtn", "additivity_check": 12},
    "mobilenetv2": {"sensitivity_samples": 8, "calibration_samples": 32, "channel_ratios": (0.5,)},
    "mobilenetv2-vbit": {"sensitivity_samples": 8, "calibration_samples": 32, "channel_ratios": (0.5,),
                         "weight_bits": (3, 4, 6, 8), "weight_method": "rtn"},
}


def model_files(name: str) -> tuple[Path, Path, Path] | None:
    if name == "digits":
        return DATA_DIR / "digits_cnn.onnx", DATA_DIR / "digits_test.npz", DATA_DIR / "digits_calib.npz"
    files = (MODELS_DIR / f"{name}.onnx", MODELS_DIR / f"{name}_test.npz", MODELS_DIR / f"{name}_calib.npz")
    return files if all(f.is_file() for f in files) else None


def ort_static(model: Path, calib: Path, out: Path, samples: int = 128) -> Path:
    """onnxruntime.quantization.quantize_static, QDQ U8S8 per channel, MinMax, after quant_pre_process."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if out.is_file():
        return out
    arrays = dict(np.load(calib))
    name = next(k for k in arrays if k != "labels")
    data = arrays[name][:samples]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: data[i : i + 16]} for i in range(0, len(data), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    pre = out.with_name(out.stem + "-pre.onnx")
    quant_pre_process(str(model), str(pre), skip_symbolic_shape=False)
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def run_one(name: str, target: str, work: Path, runs: int, fresh: bool, docs: Path) -> dict[str, Any] | str:
    """Explore ``name`` on ``target`` in ``work``; the Pareto plot goes under ``<docs>/docs/bench_explore/``."""
    import onnxpq.search.explore as explore_mod
    from onnxpq.report.pareto import pareto_figure

    files = model_files(name)
    if files is None:
        return f"skipped: build it with `python models/{name}.py` (files missing in {MODELS_DIR})"
    model, test, calib = files
    out = work / f"{name}-{target}"
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    ort_model = ort_static(model, calib, work / f"{name}-ort-static-u8s8.onnx")
    settings = dict(SETTINGS.get(f"{name}-{target}", SETTINGS.get(name, {})))
    start = time.perf_counter()
    result = explore_mod.explore(
        model, out, target=target, data=test, calibration=calib, executor="local", workers=1,
        latency_runs=runs, latency_batch=LATENCY_BATCH.get(name, 1),
        extra_baselines={"ort-static-u8s8": ort_model}, **settings,
    )
    seconds = time.perf_counter() - start
    doc = result.document
    figure = pareto_figure(doc, [doc["primary_cost"], "weight_bits"], title=f"{name} on {target}")
    png = docs / "docs" / "bench_explore" / f"{name}-{target}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=90)
    return {"doc": doc, "seconds": seconds, "png": png.relative_to(docs), "settings": settings}


def _fmt_cost(value: float | None, figure: str) -> str:
    if value is None:
        return "—"
    if figure == "latency_ms":
        return f"{value:.4g} ms"
    return f"{value:.3g}"


def _why(doc: dict[str, Any], point: dict[str, Any]) -> list[str]:
    """Per layer of the chosen configuration: its setting and the sensitivity behind it."""
    lines = []
    sens = doc["sensitivity"]
    pruned_with = {  # a producer of a pruned group it does not own: its channels go at the owner's ratio
        producer: (layer["name"], point["layers"][layer["name"]].split("+")[-1])
        for layer in doc["layers"] if "prune" in point["layers"].get(layer["name"], "")
        for producer in layer.get("channel_producers", ()) if producer != layer["name"]
    }
    for layer in doc["layers"]:
        setting = point["layers"].get(layer["name"], "float")
        if layer["name"] in pruned_with:
            owner, ratio = pruned_with[layer["name"]]
            setting += f" (channels: {ratio} with {owner}'s group)"
        entries = {e["candidate"]: e for e in sens.get(layer["name"], [])}
        noise = ", ".join(f"{k} {e['sqnr_db']:.1f} dB" if e["sqnr_db"] is not None else f"{k} exact"
                          for k, e in entries.items())
        lines.append(f"| {layer['name']} | {layer['op_type']} | {layer['macs']:,} | {setting} | {noise or '—'} |")
    return lines


def section_block(name: str, target: str, run: dict[str, Any] | str) -> str:
    head = f"### {name} on {target}\n"
    if isinstance(run, str):
        return head + "\n" + run + "\n"
    doc = run["doc"]
    primary = doc["primary_cost"]
    points = {p["id"]: p for p in doc["points"]}
    planned = [p for p in doc["points"] if p["kind"] == "planned"]
    frontier = sorted((p for p in planned if p["on_frontier"][primary]), key=lambda p: p["costs"][primary])
    comparison = doc["baseline_comparison"][primary]
    verdicts = [c["dominates"] for c in comparison.values()]
    tolerance = max((c.get("tolerance") or 0.0 for c in comparison.values()), default=0.0)
    lines = [head]
    anchors = doc["planner"].get("anchors")
    lines.append(
        f"Quality: {doc['quality_measure']} on {doc['data']['eval_samples']} samples; cost: {primary} "
        f"({'measured, 1 thread, interleaved, medians, batch ' + str(doc['latency_batch']) if primary == 'latency_ms' else 'the target cost model'}); "
        f"planner cost model: {doc['planner']['cost_model']}; {len(planned)} planned configurations"
        f"{f' ({anchors} of them anchors around the target default)' if anchors else ''}, "
        f"{doc['planner']['sensitivity_evaluations']} sensitivity measurements; {run['seconds']:.0f} s "
        f"(settings: {json.dumps(run['settings'])}).\n"
    )
    missed = [k[2:] for k, c in comparison.items() if not c["dominates"]]
    lines.append(f"**The frontier dominates {sum(1 for v in verdicts if v)} of {len(verdicts)} baselines** (strictly)"
                 + (f" (not: {', '.join(missed)})." if missed else ".") + "\n")
    noise = doc.get("latency_noise") or {}
    if tolerance > 0:
        within = [k[2:] for k, c in comparison.items() if c.get("dominates_within_tolerance")]
        lines.append(
            f"Within the latency measurement's noise (τ = {tolerance:.1%}: the median relative half-width of the 95 % "
            f"interval of a model's median over {noise.get('rounds')} interleaved rounds, each time relative to its round; a frontier "
            f"point as accurate and at most τ dearer is a tie): {len(within)} of {len(verdicts)}"
            + (f" ({', '.join(within)})." if within else ".") + "\n")
    lines.append(f"| baseline | {doc['quality_measure']} | {primary} | frontier best at ≤ cost | acc@cost | "
                 "frontier least cost at ≥ acc | cost@acc | dominates | within τ |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    float_point = points["b-float"]
    lines.append(f"| float | {float_point['quality']:.4f} | {_fmt_cost(float_point['costs'][primary], primary)} | | | | | | |")
    for key, c in comparison.items():
        b = points[key]
        best_q = "—" if c["best_quality_at_cost"] is None else f"{c['best_quality_at_cost']:.4f}"
        tie = "yes" if c.get("dominates_within_tolerance") else "no"
        lines.append(
            f"| {key[2:]} | {b['quality']:.4f} | {_fmt_cost(b['costs'][primary], primary)} | {best_q} | "
            f"{'yes' if c['as_accurate_at_cost'] else 'no'} | {_fmt_cost(c['least_cost_at_quality'], primary)} | "
            f"{'yes' if c['as_cheap_at_accuracy'] else 'no'} | {'**yes**' if c['dominates'] else 'no'} | {tie} |"
        )
    lines.append("")
    lines.append(f"Frontier ({primary}): " + "; ".join(
        f"{p['id']} {p['quality']:.4f} @ {_fmt_cost(p['costs'][primary], primary)}" for p in frontier) + "\n")
    chosen = points.get(doc["chosen"]) if doc["chosen"] else None
    if chosen is not None:
        lines.append(f"Chosen (cheapest within a 1-point drop): **{chosen['id']}**, {doc['quality_measure']} "
                     f"{chosen['quality']:.4f} (drop {chosen['drop']:+.4f}), {_fmt_cost(chosen['costs'][primary], primary)}; "
                     f"pipeline `{chosen['pipeline']}`\n")
        lines.append("| layer | op | MACs | chosen | sensitivity of each candidate alone (SQNR of the output) |")
        lines.append("|---|---|---|---|---|")
        lines += _why(doc, chosen)
        lines.append("")
    agreement = doc["planner"].get("cost_agreement") or {}
    if agreement.get("spearman") is not None:
        lines.append(f"Planner cost vs {primary} (Σ per-layer {doc['planner']['cost_model']} cost at batch "
                     f"{doc['planner'].get('cost_batch', 1)} against the whole model, {agreement['points']} planned "
                     f"configurations): Spearman = {agreement['spearman']:.3f}.\n")
    add = doc["additivity"]
    if add.get("pearson_log10") is not None:
        lines.append(f"Additivity (Σ per-layer noise vs measured noise, {add['configurations']} configurations incl. random ones): "
                     f"Pearson r(log10) = {add['pearson_log10']:.3f}, Spearman = {add['spearman']:.3f}, "
                     f"measured/predicted median {add['ratio_median']:.2f} (p10 {add['ratio_p10']:.2f}, p90 {add['ratio_p90']:.2f}).\n")
    lines.append(f"![{name} on {target}]({run['png']})\n")
    return "\n".join(lines)


def _existing_blocks(text: str) -> dict[str, str]:
    """The ``### <model> on <target>`` blocks already in this script's section, by ``<model>-<target>``."""
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start == -1 or end == -1:
        return {}
    blocks: dict[str, str] = {}
    for chunk in text[start:end].split("\n### ")[1:]:
        heading = chunk.splitlines()[0]
        model, _, target = heading.partition(" on ")
        blocks[f"{model.strip()}-{target.strip()}"] = "### " + chunk.rstrip("\n") + "\n"
    return blocks


def write_section(benchmarks: Path, blocks: dict[str, str], command: str) -> None:
    """Replace this script's section; blocks of models/targets not run this time are kept."""
    text = benchmarks.read_text() if benchmarks.is_file() else "# Benchmarks\n"
    merged = _existing_blocks(text)
    merged.update(blocks)
    order = [f"{m}-{t}" for m in ("digits", "mnist", "mobilenetv2") for t in ("cpu", "vbit", "gpu")]
    blocks = {k: merged[k] for k in sorted(merged, key=lambda k: (order.index(k) if k in order else len(order), k))}
    body = ["## Explore: per-layer planned frontier vs uniform baselines", "",
            f"Last command: `{command}` (blocks of models/targets it did not run are kept from earlier runs "
            "of this script; each block states its own settings)", "", *machine_lines(), "",
            "How to read: each planned configuration is one setting per layer chosen by the planner (DP/Lagrangian "
            "over per-layer sensitivities); `acc@cost` = a frontier point is at least as accurate at the baseline's "
            "cost, `cost@acc` = a frontier point at least as accurate costs no more. Written by `tools/bench_explore.py`.",
            ""]
    body += [blocks[k] for k in blocks]
    replace_section(benchmarks, START_MARKER, END_MARKER, "\n".join(body) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "mnist", "mobilenetv2"])
    parser.add_argument("--targets", nargs="+", default=["cpu", "vbit"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onnxpq-bench-explore")
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--fresh", action="store_true", help="discard cached evaluations in --work")
    parser.add_argument("--benchmarks", type=Path, default=REPO_ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    command = "python tools/bench_explore.py " + " ".join(sys.argv[1:] if argv is None else argv)
    blocks: dict[str, str] = {}
    for name in args.models:
        for target in args.targets:
            print(f"== {name} on {target}", flush=True)
            run = run_one(name, target, args.work, args.latency_runs, args.fresh, args.benchmarks.resolve().parent)
            blocks[f"{name}-{target}"] = section_block(name, target, run)
            print(blocks[f"{name}-{target}"], flush=True)
            write_section(args.benchmarks, blocks, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
