"""Scale: a multi-GiB external-data model goes through weight quantization with peak RSS at most half its size.

The model and the measurement are those of ``tools/bench_scale.py``: a chain
of float32 MatMul weights in one external data file, generated
streaming; the real command line (``onnxpq optimize ... --pipeline ...``) in a
fresh process under ``/usr/bin/time -v``; the output then loaded safely and
run in one full onnxruntime session against the original. The heavy variant
(1 GiB of 4 MiB layers, BERT-large-sized) runs in CI; the 3 GiB one (16 MiB
layers, GPT-2-XL-sized) is ``slow`` and in BENCHMARKS.md.

Memory: the input's weights are memory-mapped and released one at a time,
the passes' new weights go to a scratch data file beside the output
(``onnxpq.io.TensorStore``), and validation reads the staged output segment
by segment, so the peak is the process's fixed cost (Python, onnxruntime)
plus one weight's working copies (quantize-weights: several times the
largest weight's float32 size) and one validation segment, not a fraction of
the model: the bound holds while the largest weight stays a small fraction
of the model.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bench_scale  # noqa: E402

MAX_RATIO = 0.5

needs_time = pytest.mark.skipif(not Path("/usr/bin/time").is_file(), reason="GNU time (/usr/bin/time) is not installed")


def _check(tmp_path: Path, size_gib: float, side: int, pipeline: str) -> None:
    need = size_gib * 1.6 * 2**30
    if shutil.disk_usage(tmp_path).free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB free in {tmp_path}")
    model, layers, (run,) = bench_scale.run_scale(tmp_path, size_gib, [pipeline], side)
    try:
        floor = bench_scale.sqnr_floor_db(bench_scale.weight_bits(pipeline), layers)
        assert run.sqnr_db is not None and run.sqnr_db >= floor, f"{pipeline}: output SQNR {run.sqnr_db:.1f} dB < {floor} dB"
        assert run.output_bytes < run.input_bytes
        message = (
            f"{pipeline}: peak RSS {run.peak_rss_bytes / 2**20:.0f} MiB is {run.ratio:.3f} x the "
            f"{run.input_bytes / 2**20:.0f} MiB model (limit {MAX_RATIO})"
        )
        print(message)
        assert run.ratio <= MAX_RATIO, message
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


@needs_time
@pytest.mark.heavy
@pytest.mark.parametrize("pipeline", bench_scale.PIPELINES)
def test_one_gib_model_quantizes_within_half_its_size_in_memory(tmp_path: Path, pipeline: str) -> None:
    _check(tmp_path, 1.0, 1024, pipeline)


@needs_time
@pytest.mark.slow
@pytest.mark.parametrize("pipeline", bench_scale.PIPELINES)
def test_three_gib_model_quantizes_within_half_its_size_in_memory(tmp_path: Path, pipeline: str) -> None:
    _check(tmp_path, 3.0, bench_scale.SIDE, pipeline)
