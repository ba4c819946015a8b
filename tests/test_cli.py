"""The command line: commands, exit codes 0/1/2, reports, determinism, the demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxpq.cli import main
from onnxpq.core import registry
from onnxpq.core.pass_base import OnnxpqPass

TEXT = """
<ir_version: 8, opset_import: ["": 17]>
g (float[N, 4] x) => (float[N, 3] y) {
  a = Identity(x)
  k = Constant<value=float[1] {1.0}>()
  b = Mul(a, k)
  h = MatMul(b, w)
  y = Relu(h)
}
"""


def _write_model(path: Path, scale: float = 1.0) -> Path:
    proto = onnx.parser.parse_model(TEXT)
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32) * scale
    proto.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    onnx.save(proto, path)
    return path


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return _write_model(tmp_path / "model.onnx")


@pytest.fixture
def data_path(tmp_path: Path, model_path: Path) -> Path:
    x = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
    w = onnx.numpy_helper.to_array(onnx.load(model_path).graph.initializer[0])
    labels = np.argmax(np.maximum(x @ w, 0), axis=1).astype(np.int64)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, labels=labels)
    return path


def test_optimize_writes_model_and_reports_and_exits_0(tmp_path: Path, model_path: Path, data_path: Path) -> None:
    out = tmp_path / "out.onnx"
    code = main(["optimize", str(model_path), "-o", str(out), "--data", str(data_path), "--report",
                 str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"), "--latency-runs", "3", "-q", "--no-payoff"])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["baseline"]["accuracy"] == 1.0 and report["optimized"]["accuracy"] >= 0.95
    assert [p["name"] for p in report["passes"]] == [
        "constants-to-initializers", "eliminate-identity", "fold-batchnorm", "eliminate-dead", "quantize-static",
        "quantize-dynamic", "quantize-gather"]
    assert "DynamicQuantizeMatMul" in [n.op_type for n in ir.load(out).graph]  # a constant-weight MatMul: dynamic int8
    assert report["optimized"]["kernels"]["integer"] == {"DynamicQuantizeMatMul": 1}
    assert "<table" in (tmp_path / "r.html").read_text()


def test_optimize_prints_the_before_after_table(tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--latency-runs", "3"]) == 0
    out = capsys.readouterr().out
    for row in ("Accuracy", "Latency p50", "Size", "MACs / sample"):
        assert row in out


def test_same_input_and_options_give_byte_identical_output(tmp_path: Path, model_path: Path) -> None:
    outputs = []
    for name in ("a.onnx", "b.onnx"):
        assert main(["optimize", str(model_path), "-o", str(tmp_path / name), "--latency-runs", "2", "-q"]) == 0
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]


def test_the_input_model_bytes_are_unchanged(tmp_path: Path, model_path: Path) -> None:
    before = model_path.read_bytes()
    assert main(["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--latency-runs", "2", "-q"]) == 0
    assert model_path.read_bytes() == before


class _Damage(OnnxpqPass):
    """Test-only lossy pass: negates the weight, so accuracy collapses."""

    name = "test-damage"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        w = model.graph.initializers["w"]
        w.const_value = ir.tensor(-w.const_value.numpy(), name="w")
        return ir.passes.PassResult(model, True)


def test_failed_accuracy_gate_exits_1_and_still_writes_everything(
    tmp_path: Path, model_path: Path, data_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.registered_passes()
    monkeypatch.setitem(registry._REGISTRY, _Damage.name, _Damage)
    out, rep = tmp_path / "out.onnx", tmp_path / "r.json"
    code = main(["optimize", str(model_path), "-o", str(out), "--pipeline", "test-damage", "--data", str(data_path),
                 "--max-accuracy-drop", "0.01", "--report", str(rep), "--latency-runs", "2", "-q"])
    assert code == 1
    assert out.exists()
    gate = json.loads(rep.read_text())["gate"]
    assert gate["passed"] is False and "exceeds the allowed 0.0100" in gate["reasons"][0]


def test_gate_without_labels_uses_top1_agreement(tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.registered_passes()
    monkeypatch.setitem(registry._REGISTRY, _Damage.name, _Damage)
    rep = tmp_path / "r.json"
    code = main(["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--pipeline", "test-damage",
                 "--max-accuracy-drop", "0.05", "--report", str(rep), "--latency-runs", "2", "-q"])
    assert code == 1
    assert json.loads(rep.read_text())["gate"]["measure"] == "1 - top-1 agreement (no labels)"


def test_validate_compares_a_model_with_its_reference(tmp_path: Path, model_path: Path, data_path: Path) -> None:
    other = _write_model(tmp_path / "other.onnx", scale=-1.0)
    rep = tmp_path / "v.json"
    code = main(["validate", str(other), "--reference", str(model_path), "--data", str(data_path),
                 "--max-accuracy-drop", "0.1", "--report", str(rep), "--latency-runs", "2", "-q"])
    assert code == 1
    report = json.loads(rep.read_text())
    assert report["command"] == "validate" and report["optimized"]["accuracy"] < report["baseline"]["accuracy"]


def test_validate_passes_for_an_identical_model(tmp_path: Path, model_path: Path, data_path: Path) -> None:
    copy = _write_model(tmp_path / "copy.onnx")
    assert main(["validate", str(copy), "--reference", str(model_path), "--data", str(data_path),
                 "--max-accuracy-drop", "0", "--latency-runs", "2", "-q"]) == 0


def test_passes_lists_and_shows(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes"]) == 0
    listing = capsys.readouterr().out
    assert "fold-batchnorm" in listing and "exact" in listing
    assert main(["passes", "show", "fold-batchnorm"]) == 0
    assert "gamma" in capsys.readouterr().out  # the docstring carries the folding math


def test_passes_show_unknown_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes", "show", "nope"]) == 2
    assert capsys.readouterr().err.strip().startswith("onnxpq: error: unknown pass 'nope'")


def test_targets_lists_builtins_and_shows_loadable_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets"]) == 0
    assert {line.split()[0] for line in capsys.readouterr().out.splitlines()} == {"cpu", "gpu", "vbit"}
    assert main(["targets", "show", "vbit"]) == 0
    toml = tmp_path / "mine.toml"
    toml.write_text(capsys.readouterr().out)
    assert main(["targets", "show", str(toml)]) == 0
    assert 'name = "vbit"' in capsys.readouterr().out


def test_version_prints_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("onnxpq ")


def test_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["optimize"])
    assert info.value.code == 2


def test_demo_runs_end_to_end_in_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "onnxpq.cli", "demo", "--out-dir", str(tmp_path), "--latency-runs", "20"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Accuracy" in proc.stdout and "Latency p50" in proc.stdout
    report = json.loads((tmp_path / "demo-report.json").read_text())
    assert report["baseline"]["accuracy"] >= 0.98
    assert abs(report["optimized"]["accuracy"] - report["baseline"]["accuracy"]) <= 0.01
    assert not any(n.op_type == "BatchNormalization" for n in ir.load(tmp_path / "demo-digits.onnx").graph)
    assert (tmp_path / "demo-report.html").stat().st_size > 1000
