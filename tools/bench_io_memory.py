"""Peak memory (max RSS) and wall time of loading and saving a large external-data model.

What it measures, side by side in one run, each variant in its own fresh
subprocess wrapped in ``/usr/bin/time -v`` (whose "Maximum resident set size"
is the peak RSS):

* ``import``: a process that only imports onnx, onnx_ir, onnxruntime and
  onnxpq; its peak RSS is the baseline subtracted from the others;
* ``A-load``: ``onnxpq.io.load_model(path)`` and nothing else (no tensor touched);
* ``B-load``: ``onnx.load(path)`` (reads all external data into protobuf);
* ``A-load+save``: ``load_model`` then ``onnxpq.io.save_model(model, out)``
  (which writes external data because the input has external tensors);
* ``B-load+save``: ``onnx.load`` then ``onnx.save(model, out,
  save_as_external_data=True, all_tensors_to_one_file=True, location="out.onnx.data")``.

Why: ``onnx.load`` holds every tensor in protobuf memory: about 2x the file
size for an inline model (file bytes plus parsed message), about 1x for an
external-data one (each tensor read into ``raw_data``). onnx-ir memory-maps
external tensors and (onnx-ir >= 1.1) copies them to the new data file in the
kernel (``copy_file_range``), so onnxpq's load/save round trip should stay
near the import baseline whatever the model size. Caveat: max RSS also counts
the file pages of memory-mapped tensors once they are *touched* (``RssFile``,
reclaimable page cache, not heap); neither A variant touches them. This script checks that claim with a
synthetic model (a chain of MatMul + Relu layers, float32 weights totalling
``--size-gib``), written once with onnx-ir as a lazy tensor per layer so that
generating it never holds more than one layer in memory (generation is not
measured).

Variants are interleaved (import, A, B, A, B per round) for ``--repeats``
rounds; medians and the A/B ratios are reported. The page cache is flushed of
dirty pages (``os.sync``) before every run, and outputs are deleted before
every run (``onnx.save`` appends to an existing data file). Times are taken
inside the subprocess around the operation only (imports excluded); the
``process s`` column is ``/usr/bin/time``'s elapsed time of the whole process.
Note that ``save_model`` also fsyncs and runs the onnx checker on the written
file, which ``onnx.save`` does not.

Both outputs are then checked: each runs in onnxruntime (session by path) on
the same input and gives outputs identical to each other and to the input
model, and onnxpq's ``.data`` file is exactly the total weight bytes.

The result table goes into ``BENCHMARKS.md`` between the markers
``<!-- bench_io_memory:start -->`` and ``<!-- bench_io_memory:end -->``
(other content is kept) and is printed to stdout.

Usage::

    python tools/bench_io_memory.py [--size-gib 1.0] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_machine import machine_lines
from bench_sections import replace_section

logger = logging.getLogger("bench_io_memory")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
START_MARKER = "<!-- bench_io_memory:start -->"
END_MARKER = "<!-- bench_io_memory:end -->"

#: Layers in the synthetic model; the square weight side follows from the size.
N_LAYERS = 16
SEED = 20240611
MODEL_NAME = "model.onnx"
DATA_NAME = "model.onnx.data"
OUT_NAME = "out.onnx"
OUT_DATA_NAME = "out.onnx.data"

VARIANTS = ("import", "A-load", "B-load", "A-load+save", "B-load+save")
VARIANT_LABELS = {
    "import": "imports only (baseline)",
    "A-load": "A load: `onnxpq.io.load_model`",
    "B-load": "B load: `onnx.load`",
    "A-load+save": "A load+save: `load_model` + `save_model`",
    "B-load+save": "B load+save: `onnx.load` + `onnx.save(external)`",
}


# --------------------------------------------------------------------------- variants (child side)


def _import_all() -> None:
    """The imports every child makes, so that the baseline subtracts exactly their cost."""
    import onnx  # noqa: F401
    import onnx_ir  # noqa: F401
    import onnxruntime  # noqa: F401

    import onnxpq  # noqa: F401
    import onnxpq.io  # noqa: F401


def run_variant(variant: str, model_path: Path, out_path: Path | None) -> dict[str, float]:
    """Run one variant in this (fresh) process and return its in-process timings in seconds."""
    _import_all()
    import onnx

    import onnxpq.io

    timings: dict[str, float] = {}
    start = time.perf_counter()
    if variant == "import":
        pass
    elif variant in ("A-load", "A-load+save"):
        model = onnxpq.io.load_model(model_path)
        timings["load_s"] = time.perf_counter() - start
        if variant == "A-load+save":
            if out_path is None:
                raise SystemExit(f"variant {variant} needs --out")
            save_start = time.perf_counter()
            onnxpq.io.save_model(model, out_path)
            timings["save_s"] = time.perf_counter() - save_start
    elif variant in ("B-load", "B-load+save"):
        proto = onnx.load(str(model_path))
        timings["load_s"] = time.perf_counter() - start
        if variant == "B-load+save":
            if out_path is None:
                raise SystemExit(f"variant {variant} needs --out")
            save_start = time.perf_counter()
            onnx.save(
                proto,
                str(out_path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=OUT_DATA_NAME,
            )
            timings["save_s"] = time.perf_counter() - save_start
    else:
        raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    timings["op_s"] = time.perf_counter() - start
    return timings


# --------------------------------------------------------------------------- synthetic model


def weight_side(size_gib: float) -> int:
    """Square weight side so that N_LAYERS float32 weights total about ``size_gib`` GiB (a multiple of 16)."""
    side = int(math.sqrt(size_gib * 2**30 / (N_LAYERS * 4)))
    return max(16, side - side % 16)


def build_model(folder: Path, side: int) -> Path:
    """Write the MatMul+Relu chain with external data; one layer's weight in memory at a time."""
    import numpy as np
    import onnx_ir as ir

    def make_weight(layer: int) -> ir.Tensor:
        rng = np.random.default_rng([SEED, layer])
        # He-scaled so activations neither vanish nor blow up through the chain.
        array = rng.standard_normal((side, side), dtype=np.float32)
        array *= np.float32(math.sqrt(2.0 / side))
        return ir.Tensor(array, name=f"w{layer}")

    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, side]))
    graph = ir.Graph(inputs=[x], outputs=[], nodes=[], opset_imports={"": 17}, name="matmul_relu_chain")
    current = x
    for layer in range(N_LAYERS):
        weight = ir.Value(
            name=f"w{layer}",
            type=ir.TensorType(ir.DataType.FLOAT),
            shape=ir.Shape([side, side]),
            const_value=ir.LazyTensor(
                lambda layer=layer: make_weight(layer),
                dtype=ir.DataType.FLOAT,
                shape=ir.Shape([side, side]),
                name=f"w{layer}",
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
    model = ir.Model(graph, ir_version=10, producer_name="bench_io_memory")
    model.metadata_props["bench_io_memory"] = json.dumps({"side": side, "layers": N_LAYERS, "seed": SEED})
    path = folder / MODEL_NAME
    ir.save(model, path, external_data=DATA_NAME)
    return path


def reusable_model(folder: Path, side: int) -> bool:
    """True when ``folder`` already holds the model this run would write (for ``--keep``)."""
    import onnx

    path, data = folder / MODEL_NAME, folder / DATA_NAME
    if not (path.is_file() and data.is_file()):
        return False
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - anything unreadable is simply rebuilt
        return False
    stamp = {entry.key: entry.value for entry in proto.metadata_props}.get("bench_io_memory")
    expected = {"side": side, "layers": N_LAYERS, "seed": SEED}
    return stamp is not None and json.loads(stamp) == expected and data.stat().st_size == weight_bytes(side)


def weight_bytes(side: int) -> int:
    return N_LAYERS * side * side * 4


# --------------------------------------------------------------------------- measurement (parent side)


@dataclass
class Sample:
    max_rss_kib: int
    process_s: float
    timings: dict[str, float]


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {v: [] for v in VARIANTS})

    def median(self, variant: str, what: str) -> float | None:
        values: list[float] = []
        for sample in self.samples[variant]:
            if what == "rss_mib":
                values.append(sample.max_rss_kib / 1024)
            elif what == "process_s":
                values.append(sample.process_s)
            elif what in sample.timings:
                values.append(sample.timings[what])
        return statistics.median(values) if values else None


def _parse_time_v(text: str) -> tuple[int, float]:
    rss = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", text)
    elapsed = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*([\d:.]+)", text)
    if rss is None or elapsed is None:
        raise RuntimeError(f"could not parse /usr/bin/time -v output:\n{text}")
    seconds = 0.0
    for part in elapsed.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return int(rss.group(1)), seconds


def measure(variant: str, model_path: Path, out_dir: Path, work: Path) -> Sample:
    """Run one variant in a fresh subprocess under ``/usr/bin/time -v``."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    os.sync()  # do not let the previous run's dirty pages be written back during this one
    time_file = work / "time.txt"
    result_file = work / "result.json"
    command = [
        "/usr/bin/time", "-v", "-o", str(time_file),
        sys.executable, str(Path(__file__).resolve()),
        "--variant", variant, "--model", str(model_path),
        "--out", str(out_dir / OUT_NAME), "--result", str(result_file),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"variant {variant} failed (exit {completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
        )
    rss_kib, process_s = _parse_time_v(time_file.read_text())
    timings = json.loads(result_file.read_text())
    return Sample(rss_kib, process_s, timings)


def verify_outputs(model_path: Path, a_out: Path, b_out: Path, side: int) -> list[str]:
    """Run the input and both outputs in onnxruntime on one input; return lines for the report."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    expected_bytes = weight_bytes(side)
    a_data = a_out.parent / OUT_DATA_NAME
    b_data = b_out.parent / OUT_DATA_NAME
    if not a_data.is_file():
        raise RuntimeError(f"onnxpq wrote no external data file {a_data}")
    if a_data.stat().st_size != expected_bytes:
        raise RuntimeError(f"{a_data} is {a_data.stat().st_size} bytes; expected the weights' {expected_bytes}")
    for path in (a_out, b_out):
        onnx.checker.check_model(str(path))

    feed = {"x": np.random.default_rng([SEED, 999]).standard_normal((1, side), dtype=np.float32)}
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    outputs = {}
    for label, path in (("input", model_path), ("A", a_out), ("B", b_out)):
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        outputs[label] = session.run(None, feed)[0]
        del session
    if not np.array_equal(outputs["A"], outputs["B"]):
        raise RuntimeError("onnxruntime outputs of A and B differ")
    if not np.array_equal(outputs["A"], outputs["input"]):
        raise RuntimeError("onnxruntime output of A differs from the input model's")
    if not np.any(outputs["A"]):
        raise RuntimeError("the model's output is all zeros: the check would prove nothing")
    return [
        f"- Outputs checked: A and B pass `onnx.checker.check_model` by path and give bit-identical onnxruntime "
        f"outputs (equal to the input model's) on one seeded input; A's `{OUT_DATA_NAME}` is "
        f"{a_data.stat().st_size:,} bytes = the weights' {expected_bytes:,} bytes (B's: {b_data.stat().st_size:,})."
    ]


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def render(results: Results, args: argparse.Namespace, side: int, file_bytes: int, extra: list[str]) -> str:
    base = results.median("import", "rss_mib") or 0.0
    lines = [
        "## I/O memory: load and save of a large external-data model",
        "",
        f"- Command: `{shlex.join(['python', 'tools/bench_io_memory.py', *args.argv])}`",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        *machine_lines(),
        f"- Model: {N_LAYERS} x (MatMul [1,{side}]x[{side},{side}] + Relu), float32; "
        f"weights {weight_bytes(side) / 2**20:,.0f} MiB in `{DATA_NAME}` ({file_bytes / 2**30:.2f} GiB on disk in all)",
        f"- Each variant in a fresh process under `/usr/bin/time -v`; interleaved "
        f"(import, A-load, B-load, A-load+save, B-load+save) x {args.repeats} rounds; medians. "
        "`op s` is timed inside the process (imports excluded); `process s` is the whole process.",
        "",
        "| variant | peak RSS MiB | minus imports MiB | load s | save s | op s | process s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        rss = results.median(variant, "rss_mib")
        lines.append(
            f"| {VARIANT_LABELS[variant]} | {_fmt(rss, 0)} | "
            f"{_fmt(None if rss is None or variant == 'import' else rss - base, 0)} | "
            f"{_fmt(results.median(variant, 'load_s'), 2)} | {_fmt(results.median(variant, 'save_s'), 2)} | "
            f"{_fmt(results.median(variant, 'op_s') if variant != 'import' else None, 2)} | "
            f"{_fmt(results.median(variant, 'process_s'), 2)} |"
        )
    lines += ["", "| ratio A/B | peak RSS | minus imports | op s |", "|---|---:|---:|---:|"]
    for a, b, label in (("A-load", "B-load", "load"), ("A-load+save", "B-load+save", "load+save")):
        ra, rb = results.median(a, "rss_mib"), results.median(b, "rss_mib")
        ta, tb = results.median(a, "op_s"), results.median(b, "op_s")
        net = (ra - base) / (rb - base) if ra is not None and rb is not None and rb - base > 0 else None
        lines.append(
            f"| {label} | {_fmt(ra / rb if ra and rb else None, 3)} | {_fmt(net, 3)} | "
            f"{_fmt(ta / tb if ta and tb else None, 2)} |"
        )
    lines += [
        "",
        *extra,
        "- Peak RSS includes file pages of memory-mapped tensors once touched (reclaimable page cache); "
        "A touches none, and onnx-ir >= 1.1 copies external tensors to the new data file with "
        "`copy_file_range`. `save_model` also fsyncs and runs the onnx checker; `onnx.save` does neither.",
    ]
    return "\n".join(lines) + "\n"


def write_section(benchmarks: Path, section: str) -> None:
    """Replace this script's section of BENCHMARKS.md (between its markers), keeping everything else."""
    replace_section(benchmarks, START_MARKER, END_MARKER, section)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=1.0, help="total float32 weight size (default 1.0)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it (reuses a matching model)")
    parser.add_argument(
        "--benchmarks",
        type=Path,
        default=DEFAULT_BENCHMARKS,
        help=f"Markdown file to update (default {DEFAULT_BENCHMARKS.name})",
    )
    # Child mode: run one variant in this process.
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.variant is None:
        if not 0 < args.size_gib <= 64:
            parser.error(f"--size-gib must be in (0, 64], got {args.size_gib}")
        if args.repeats < 1:
            parser.error(f"--repeats must be at least 1, got {args.repeats}")
        if not Path("/usr/bin/time").is_file():
            parser.error("/usr/bin/time (GNU time) is required: apt-get install time")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.variant is not None:
        timings = run_variant(args.variant, args.model, args.out)
        args.result.write_text(json.dumps(timings))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    side = weight_side(args.size_gib)
    need = int(3 * weight_bytes(side) * 1.1) + 2**28  # input + two outputs, plus staging slack
    if args.keep is not None:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="bench_io_memory-"))
    free = shutil.disk_usage(work).free
    logger.info("work folder %s: %.1f GiB free, %.1f GiB needed", work, free / 2**30, need / 2**30)
    try:
        if free < need and not reusable_model(work, side):
            raise SystemExit(f"not enough disk space in {work}: {free / 2**30:.1f} GiB free, need {need / 2**30:.1f}")
        if reusable_model(work, side):
            model_path = work / MODEL_NAME
            logger.info("reusing %s", model_path)
        else:
            logger.info(
                "writing %d layers of %dx%d float32 (%.2f GiB)", N_LAYERS, side, side, weight_bytes(side) / 2**30
            )
            started = time.perf_counter()
            model_path = build_model(work, side)
            logger.info("model written in %.1f s", time.perf_counter() - started)
        file_bytes = model_path.stat().st_size + (work / DATA_NAME).stat().st_size

        results = Results()
        out_dirs = {"A-load+save": work / "out_A", "B-load+save": work / "out_B"}
        for round_index in range(args.repeats):
            for variant in VARIANTS:
                out_dir = out_dirs.get(variant, work / "out_scratch")
                sample = measure(variant, model_path, out_dir, work)
                results.samples[variant].append(sample)
                logger.info(
                    "round %d/%d %-12s peak RSS %7.0f MiB  op %6.2f s  process %6.2f s",
                    round_index + 1, args.repeats, variant, sample.max_rss_kib / 1024,
                    sample.timings.get("op_s", 0.0), sample.process_s,
                )  # fmt: skip

        logger.info("verifying outputs in onnxruntime")
        extra = verify_outputs(model_path, out_dirs["A-load+save"] / OUT_NAME, out_dirs["B-load+save"] / OUT_NAME, side)
        section = render(results, args, side, file_bytes, extra)
        write_section(args.benchmarks, section)
        logger.info("updated %s", args.benchmarks)
        print(section)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            logger.info("kept %s", work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
