"""Peak memory (max RSS) and wall time of ``onnxpq optimize`` on a synthetic model of several GiB.

The model is a chain of ``MatMul [1, side] x [side, side]`` + ``Relu`` layers
with float32 He-scaled random weights (``side`` 2048 by default: 16 MiB a
layer, the size of a GPT-2-XL / 1.5B-parameter projection; ``--side 4096``
gives 64 MiB layers), in one external data file. It is generated streaming: each layer's weight is an onnx-ir
``LazyTensor`` made when the writer reaches it, so the generator holds one
layer at a time.

Each pipeline runs as the real command line in a fresh process under
``/usr/bin/time -v`` ("Maximum resident set size" is the peak RSS of the whole
command: load, passes, save, validation in onnxruntime, report)::

    onnxpq optimize model.onnx -o out/model.onnx --pipeline PIPELINE --report out/report.json --latency-runs 1

and must stay within ``--max-ratio`` (0.5) x the model's size on disk. Then
the output is checked outside the measured process: ``onnxpq.io.load_model``
(safe load, onnx checker), one full onnxruntime session of the original and
one of the output (no segmenting: the whole model at once), on
``SAMPLES`` seeded inputs; the output's signal-to-quantization-noise ratio
against the original must reach the bit-width's floor for the chain's depth (``sqnr_floor_db``).

The table goes into ``BENCHMARKS.md`` between ``<!-- bench_scale:start -->``
and ``<!-- bench_scale:end -->`` (everything else is kept) and is printed.

Usage::

    python tools/bench_scale.py [--size-gib 3.0] [--keep DIR] [--pipelines "quantize-weights{bits=8}" "matmul-nbits"]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_machine import machine_lines  # noqa: E402
from bench_sections import replace_section  # noqa: E402

logger = logging.getLogger("bench_scale")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
START_MARKER = "<!-- bench_scale:start -->"
END_MARKER = "<!-- bench_scale:end -->"

SIDE = 2048
SEED = 20261123
SAMPLES = 4
MODEL_NAME = "model.onnx"
DATA_NAME = "model.onnx.data"
PIPELINES = ("quantize-weights{bits=8}", "matmul-nbits")

#: Per-layer output SQNR (dB) a correct quantizer reaches on these Gaussian weights, by weight bits (about 6 dB
#: per bit: 8-bit ~40 dB, 4-bit ~19-20 dB), less a margin.
LAYER_SQNR_DB = {8: 38.0, 4: 17.0}


def sqnr_floor_db(bits: int, layers: int) -> float:
    """Lowest acceptable SQNR of the whole chain: each layer adds its own noise power, so the chain's SQNR is
    about the per-layer one less 10·log10(layers) (256 layers: −24 dB), with 3 dB of margin."""
    return LAYER_SQNR_DB[bits] - 10.0 * math.log10(max(1, layers)) - 3.0


def layers_for(size_gib: float, side: int = SIDE) -> int:
    """Layers of ``side x side`` float32 so that the weights total at least ``size_gib`` GiB."""
    return max(1, math.ceil(size_gib * 2**30 / (side * side * 4)))


def build_model(folder: Path, layers: int, side: int = SIDE, seed: int = SEED) -> Path:
    """Write the MatMul+Relu chain with external data, one layer's weight in memory at a time."""
    import numpy as np
    import onnx_ir as ir

    def make_weight(layer: int) -> ir.Tensor:
        rng = np.random.default_rng([seed, layer])
        array = rng.standard_normal((side, side), dtype=np.float32)
        array *= np.float32(math.sqrt(2.0 / side))  # He scaling: activations neither vanish nor blow up
        return ir.Tensor(array, name=f"w{layer}")

    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, side]))
    graph = ir.Graph(inputs=[x], outputs=[], nodes=[], opset_imports={"": 17}, name="scale_chain")
    current = x
    for layer in range(layers):
        weight = ir.Value(
            name=f"w{layer}",
            type=ir.TensorType(ir.DataType.FLOAT),
            shape=ir.Shape([side, side]),
            const_value=ir.LazyTensor(
                lambda layer=layer: make_weight(layer), dtype=ir.DataType.FLOAT, shape=ir.Shape([side, side]), name=f"w{layer}"
            ),
        )
        graph.register_initializer(weight)
        matmul = ir.node("MatMul", [current, weight], name=f"matmul{layer}")
        matmul.outputs[0].name = f"mm{layer}"
        relu = ir.node("Relu", [matmul.outputs[0]], name=f"relu{layer}")
        relu.outputs[0].name = f"h{layer}"
        graph.extend([matmul, relu])
        current = relu.outputs[0]
    current.name = "y"
    current.type = ir.TensorType(ir.DataType.FLOAT)
    current.shape = ir.Shape([1, side])
    graph.outputs.append(current)
    model = ir.Model(graph, ir_version=10, producer_name="bench_scale")
    model.metadata_props["bench_scale"] = json.dumps({"side": side, "layers": layers, "seed": seed})
    path = folder / MODEL_NAME
    ir.save(model, path, external_data=DATA_NAME)
    return path


def model_bytes(path: Path) -> int:
    """The .onnx file plus its external data file."""
    return path.stat().st_size + (path.parent / DATA_NAME).stat().st_size


def _reusable(folder: Path, layers: int, side: int) -> bool:
    import onnx

    path = folder / MODEL_NAME
    if not path.is_file() or not (folder / DATA_NAME).is_file():
        return False
    stamp = {e.key: e.value for e in onnx.load(str(path), load_external_data=False).metadata_props}.get("bench_scale")
    return stamp is not None and json.loads(stamp) == {"side": side, "layers": layers, "seed": SEED}


@dataclasses.dataclass
class Run:
    """One measured ``onnxpq optimize`` run."""

    pipeline: str
    command: list[str]
    peak_rss_bytes: int
    wall_s: float
    input_bytes: int
    output_bytes: int
    sqnr_db: float | None = None
    report_sqnr_db: float | None = None
    latency_method: str = ""

    @property
    def ratio(self) -> float:
        return self.peak_rss_bytes / self.input_bytes


def _parse_time_v(text: str) -> tuple[int, float]:
    rss = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
    elapsed = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*([\d:.]+)", text)
    if rss is None or elapsed is None:
        raise RuntimeError(f"could not parse /usr/bin/time -v output:\n{text}")
    seconds = 0.0
    for part in elapsed.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return int(rss.group(1)) * 1024, seconds


def onnxpq_command() -> list[str]:
    """The installed ``onnxpq`` script beside this Python, or ``python -m onnxpq.cli``."""
    script = Path(sys.executable).with_name("onnxpq")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "onnxpq.cli"]


def measure(model: Path, out_dir: Path, pipeline: str) -> Run:
    """Run the CLI under /usr/bin/time -v; return its peak RSS and wall time."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    os.sync()
    time_file = out_dir.parent / "time.txt"
    command = [
        *onnxpq_command(), "optimize", str(model), "-o", str(out_dir / MODEL_NAME),
        "--pipeline", pipeline, "--report", str(out_dir / "report.json"), "--latency-runs", "1",
    ]  # fmt: skip
    completed = subprocess.run(["/usr/bin/time", "-v", "-o", str(time_file), *command], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    rss, wall = _parse_time_v(time_file.read_text())
    report = json.loads((out_dir / "report.json").read_text())
    run = Run(pipeline, command, rss, wall, model_bytes(model), report["optimized"]["size_bytes"])
    run.report_sqnr_db = report["fidelity"].get("sqnr_db")
    run.latency_method = report["optimized"]["latency_ms"].get("method", "")
    return run


def weight_bits(pipeline: str) -> int:
    found = re.search(r"bits=(\d+)", pipeline)
    return int(found.group(1)) if found else 4  # matmul-nbits defaults to 4


def check_output(model: Path, output: Path, side: int = SIDE) -> float:
    """Load the output safely, run original and output each in one full onnxruntime session; the output's SQNR in dB."""
    import numpy as np
    import onnxruntime as ort

    from onnxpq.io import load_model

    load_model(output)  # safe load + onnx checker by path
    feed = np.random.default_rng([SEED, 999]).standard_normal((SAMPLES, 1, side), dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    results = []
    for path in (model, output):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        results.append(np.stack([session.run(None, {"x": sample})[0] for sample in feed]).astype(np.float64))
        del session
    reference, candidate = results
    if not np.any(reference):
        raise RuntimeError("the original's output is all zeros: the comparison would prove nothing")
    noise = float(np.sum((reference - candidate) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference**2)) / noise)


def render(runs: list[Run], args: argparse.Namespace, layers: int, side: int, size: int, max_ratio: float) -> str:
    from onnxpq.core.session import SEGMENT_BYTES, SEGMENTED_ABOVE_BYTES

    lines = [
        "## Scale: optimize a multi-GiB external-data model in bounded memory",
        "",
        f"- Command: `{shlex.join(['python', 'tools/bench_scale.py', *args.argv])}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        *machine_lines(),
        f"- Model: {layers} x (MatMul [1,{side}]x[{side},{side}] + Relu), float32 random weights "
        f"({side * side * 4 / 2**20:.0f} MiB a layer), "
        f"{size / 2**30:.2f} GiB on disk (`{DATA_NAME}`), generated streaming (one layer in memory)",
        "- Each run: the CLI in a fresh process under `/usr/bin/time -v` (peak RSS = the whole command: load, passes, "
        "atomic save, validation in onnxruntime, report); the output then checked apart: `load_model`, one full "
        f"onnxruntime session each of the original and the output on {SAMPLES} seeded inputs, SQNR of the output.",
        "",
        "| pipeline | peak RSS MiB | RSS / model size | wall s | output MiB | output SQNR dB (full sessions) | floor dB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| `{run.pipeline}` | {run.peak_rss_bytes / 2**20:,.0f} | {run.ratio:.3f} | {run.wall_s:,.1f} | "
            f"{run.output_bytes / 2**20:,.0f} | {run.sqnr_db:.1f} | {sqnr_floor_db(weight_bits(run.pipeline), layers):.0f} |"
        )
    lines += ["", "Exact commands:", ""]
    lines += [f"- `{shlex.join(['/usr/bin/time', '-v', 'onnxpq', *run.command[len(onnxpq_command()):]])}`" for run in runs]
    lines += [
        "",
        f"- Limit: peak RSS <= {max_ratio} x model size. How: external tensors are memory-mapped and released weight by "
        "weight in the passes; the tensors the passes make go to a scratch data file beside the output "
        "(`onnxpq.io.TensorStore`), not into memory, and are copied to the output's data file in the kernel; the output "
        "keeps external data, and from staging on the optimized model reads its weights from the staged file "
        f"(`StagedModel.map_tensors`); validation runs a model whose weights, as onnxruntime holds them, exceed "
        f"{SEGMENTED_ABOVE_BYTES >> 20} MiB segment by segment (`onnxpq.core.session.SegmentedSession`, at most "
        f"{SEGMENT_BYTES >> 20} MiB of weights per onnxruntime session, prepacking and the CPU memory arena off, freed "
        "heap memory handed back after every run), so its latency is estimated, not measured: "
        f"`{runs[0].latency_method if runs else ''}`. `onnxpq optimize -vv` logs the resident memory after each stage.",
    ]
    return "\n".join(lines) + "\n"


def write_section(benchmarks: Path, section: str) -> None:
    """Replace this script's section of BENCHMARKS.md (between its markers), keeping everything else."""
    replace_section(benchmarks, START_MARKER, END_MARKER, section)


def run_scale(
    work: Path, size_gib: float, pipelines: tuple[str, ...] | list[str], side: int = SIDE
) -> tuple[Path, int, list[Run]]:
    """Build (or reuse) the model in ``work``, measure every pipeline, check every output; return (model, layers, runs)."""
    layers = layers_for(size_gib, side)
    need = int(layers * side * side * 4 * 1.6) + 2**28  # input + the largest output (int8: 0.25x) + staging
    free = shutil.disk_usage(work).free
    if _reusable(work, layers, side):
        model = work / MODEL_NAME
        logger.info("reusing %s", model)
    else:
        if free < need:
            raise SystemExit(f"not enough disk space in {work}: {free / 2**30:.1f} GiB free, need {need / 2**30:.1f}")
        started = time.perf_counter()
        model = build_model(work, layers, side)
        logger.info("wrote %d layers (%.2f GiB) in %.0f s", layers, model_bytes(model) / 2**30, time.perf_counter() - started)
    runs = []
    for index, pipeline in enumerate(pipelines):
        out_dir = work / f"out{index}"
        run = measure(model, out_dir, pipeline)
        run.sqnr_db = check_output(model, out_dir / MODEL_NAME, side)
        logger.info(
            "%s: peak RSS %.0f MiB (%.3f x), %.1f s, output SQNR %.1f dB",
            pipeline, run.peak_rss_bytes / 2**20, run.ratio, run.wall_s, run.sqnr_db,
        )  # fmt: skip
        shutil.rmtree(out_dir, ignore_errors=True)
        runs.append(run)
    return model, layers, runs


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=3.0, help="float32 weights in GiB (default 3.0)")
    parser.add_argument("--side", type=int, default=SIDE, help=f"weight side (default {SIDE}: 16 MiB float32 layers)")
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), help="pipelines to run (default: both)")
    parser.add_argument("--max-ratio", type=float, default=0.5, help="peak RSS / model size limit (default 0.5)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep the model (reused when it matches)")
    parser.add_argument("--benchmarks", type=Path, default=DEFAULT_BENCHMARKS, help="Markdown file to update")
    args = parser.parse_args(argv)
    args.argv = argv
    if not Path("/usr/bin/time").is_file():
        parser.error("/usr/bin/time (GNU time) is required: apt-get install time")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    work = args.keep.resolve() if args.keep is not None else Path(tempfile.mkdtemp(prefix="bench_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model, layers, runs = run_scale(work, args.size_gib, args.pipelines, args.side)
        section = render(runs, args, layers, args.side, model_bytes(model), args.max_ratio)
        write_section(args.benchmarks, section)
        print(section)
        over = [run for run in runs if run.ratio > args.max_ratio]
        low = [run for run in runs if run.sqnr_db is None or run.sqnr_db < sqnr_floor_db(weight_bits(run.pipeline), layers)]
        for run in over:
            logger.error("%s: peak RSS %.3f x the model size, over %.2f", run.pipeline, run.ratio, args.max_ratio)
        for run in low:
            logger.error("%s: output SQNR %.1f dB under the floor", run.pipeline, run.sqnr_db or float("nan"))
        return 1 if over or low else 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
