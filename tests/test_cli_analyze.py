"""``onnxpq analyze``: the terminal table, the JSON (onnxpq.analyze/1), and exit 2 on bad input."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest

from onnxpq.cli import main


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def two_layer_path(tmp_path: Path) -> Path:
    """conv (Gaussian weights) -> flatten -> fc (Student-t weights, heavy-tailed)."""
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    fc = rng.standard_t(3, (10, 8 * 6 * 6 * 4)).astype(np.float32)
    graph = oh.make_graph(
        [
            oh.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            oh.make_node("Reshape", ["c", "shape"], ["f"], name="flatten"),
            oh.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1),
        ],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 12, 12])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])],
        [
            onnx.numpy_helper.from_array(conv, "cw"),
            onnx.numpy_helper.from_array(fc, "fw"),
            onnx.numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape"),
        ],
    )
    path = tmp_path / "two.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def test_analyze_prints_one_row_per_weight_and_a_summary(two_layer_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(two_layer_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith(("conv ", "fc "))]
    assert [row.split()[0] for row in rows] == ["conv", "fc"]
    assert "int4/prune75%" in out[1]
    assert out[-1].startswith("Against FP16") and "pruning wins for 1 at 2 bits" in out[-1]


def test_analyze_writes_the_documented_json(two_layer_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    assert main(["analyze", str(two_layer_path), "--granularity", "per-channel", "--json", str(out), "-q"]) == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "onnxpq.analyze/1" and data["granularity"] == "per-channel"
    assert [layer["node"] for layer in data["layers"]] == ["conv", "fc"]
    fc = data["layers"][1]
    assert fc["quantization_axis"] == 0 and fc["params"] == 10 * 1152 and fc["shape"] == [10, 1152]
    first = fc["compression"][0]
    assert first["bits"] == 2 and first["prune_fp16"]["sparsity"] == 0.875 and first["prune_own"]["sparsity"] == 0.9375
    assert first["winner_fp16"] in ("prune", "quantize") and isinstance(fc["verdict"], str)
    assert data["summary"]["tensors"] == 2 and set(data["summary"]["pruning_wins_fp16"]) == {str(b) for b in range(2, 9)}


@pytest.mark.parametrize(
    "argv_tail",
    [["--granularity", "per-group"], ["--bits", "1,4"], ["--bits", "four"]],
    ids=["granularity", "bits-range", "bits-text"],
)
def test_analyze_bad_options_exit_2(two_layer_path: Path, argv_tail: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        code = main(["analyze", str(two_layer_path), *argv_tail])
        raise SystemExit(code)
    assert stop.value.code == 2
    assert "error" in capsys.readouterr().err


def test_analyze_missing_or_garbage_model_exits_2_without_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    out = tmp_path / "a.json"
    for model in (tmp_path / "missing.onnx", garbage):
        assert main(["analyze", str(model), "--json", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("onnxpq: error:")
    assert not out.exists()
