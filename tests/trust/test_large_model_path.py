"""optimize on a model with external data (the large-model path) writes what the in-memory path writes.

On such a model ``optimize`` puts the tensors the passes make in a scratch
data file beside the output (``onnxpq.io.TensorStore``), writes the output
with external data whatever its size, and reads the optimized model's
weights back from the staged file for validation and the report. None of it
may change a byte of the output, and no scratch file may be left behind.
The model here is small (a few MiB) but has weights above the store's size
floor, so every step of the path runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq import io
from onnxpq.core import PassContext, PassManager, parse_pipeline
from onnxpq.targets.profile import load_target
from onnxpq.workflows import optimize

PIPELINES = ("quantize-weights{bits=8}", "quantize-weights{bits=4,granularity=per-group,block_size=32}", "matmul-nbits")
SIDE = 512  # 1 MiB float32 weights: their int8 or 4-bit forms are above the store's 64 KiB floor


def _chain(folder: Path) -> Path:
    """x[N, 512] -> 3 x (MatMul + Relu), opset 21, weights in ``model.onnx.data``."""
    rng = np.random.default_rng(0)
    inits, nodes, current = [], [], "x"
    for layer in range(3):
        weight = (rng.standard_normal((SIDE, SIDE)) * np.sqrt(2.0 / SIDE)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{layer}"], [f"m{layer}"], name=f"matmul{layer}"))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [f"h{layer}"], name=f"relu{layer}"))
        current = f"h{layer}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SIDE])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data", size_threshold=1024)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if not path.name.endswith(".json")}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _chain(tmp_path_factory.mktemp("large_path") / "in")


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_external_data_model_output_equals_the_in_memory_pipelines(model_path: Path, tmp_path: Path, pipeline: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    optimize(model_path, out / "o.onnx", pipeline=pipeline, latency_runs=1, progress=False, report=out / "r.json")
    with PassContext(target=load_target("cpu")):
        expected = PassManager(parse_pipeline(pipeline), check_numerics=False, progress=False)(io.load_model(model_path)).model
    plain = tmp_path / "plain"
    plain.mkdir()
    io.save_model(expected, plain / "o.onnx", external_data=True)
    assert _files(out) == _files(plain)
    assert not any(p.name.startswith(io.STAGING_PREFIX) for p in out.iterdir()), "a scratch folder was left behind"


def test_external_data_model_puts_new_weights_in_the_tensor_store(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored: list[str] = []
    real_put = io.TensorStore.put

    def put(self: io.TensorStore, tensor: object) -> object:
        result = real_put(self, tensor)  # type: ignore[arg-type]
        if result is not tensor:
            stored.append(result.name)  # type: ignore[attr-defined]
        return result

    monkeypatch.setattr(io.TensorStore, "put", put)
    optimize(model_path, tmp_path / "o.onnx", pipeline="quantize-weights{bits=8}", latency_runs=1, progress=False)
    assert stored == ["w0_quantized", "w1_quantized", "w2_quantized"]


def test_external_data_model_output_keeps_external_data_below_the_size_rule(model_path: Path, tmp_path: Path) -> None:
    """The 0.8 MiB 8-bit output is far under the size that alone asks for external data; its input had it."""
    optimize(model_path, tmp_path / "o.onnx", pipeline="quantize-weights{bits=8}", latency_runs=1, progress=False)
    data = [p for p in tmp_path.iterdir() if p.name.startswith("o.onnx.") and p.name.endswith(".data")]
    assert len(data) == 1 and data[0].stat().st_size < io.EXTERNAL_ABOVE_BYTES
    proto = onnx.load(str(tmp_path / "o.onnx"), load_external_data=False)
    assert {t.name for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL} >= {
        "w0_quantized", "w1_quantized", "w2_quantized",
    }  # fmt: skip


def _cli_files(model: Path, out: Path, pipeline: str, hash_seed: str) -> dict[str, bytes]:
    out.mkdir()
    command = [sys.executable, "-m", "onnxpq.cli", "optimize", str(model), "-o", str(out / "o.onnx"), "--pipeline", pipeline,
               "--latency-runs", "1", "-q"]  # fmt: skip
    completed = subprocess.run(command, env={**os.environ, "PYTHONHASHSEED": hash_seed}, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    return _files(out)


@pytest.mark.heavy
@pytest.mark.parametrize("pipeline", ["quantize-weights{bits=8}", "matmul-nbits"])
def test_external_data_model_is_identical_across_processes_and_hash_seeds(model_path: Path, tmp_path: Path, pipeline: str) -> None:
    first = _cli_files(model_path, tmp_path / "seed1", pipeline, "1")
    second = _cli_files(model_path, tmp_path / "seed2", pipeline, "2")
    assert first == second and len(first) == 2
