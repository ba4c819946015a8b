"""Config files: --config, [tool.onnxpq] in pyproject.toml, precedence, paths, unknown keys, ``config show``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxpq.cli import main

TEXT = """
<ir_version: 8, opset_import: ["": 17]>
g (float[N, 4] x) => (float[N, 3] y) {
  a = Identity(x)
  h = MatMul(a, w)
  y = Relu(h)
}
"""


def _model(path: Path) -> Path:
    proto = onnx.parser.parse_model(TEXT)
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    return path


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder as the current folder, with no pyproject.toml above it in tmp."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _show(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Run ``config show``; return (exit code, key -> (value text, origin), stderr)."""
    code = main(["config", "show", *args])
    captured = capsys.readouterr()
    rows = {}
    for line in captured.out.splitlines():
        if " = " in line and not line.startswith("# onnxpq"):
            body, _, origin = line.partition("  # ")
            key, _, value = body.lstrip("# ").partition(" = ")
            rows[key.strip()] = (value.strip(), origin.strip())
    return code, rows, captured.err


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_config_show_reports_each_value_and_its_origin(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(work / "ci" / "onnxpq.toml", 'target = "vbit"\nlatency-runs = 7\n[gates]\nmax-accuracy-drop = 0.02\n')
    code, rows, _ = _show(capsys, "--config", str(config), "--threads", "2")
    assert code == 0
    assert rows["target"] == ('"vbit"', str(config.resolve()))
    assert rows["latency-runs"] == ("7", str(config.resolve()))
    assert rows["max-accuracy-drop"] == ("0.02", f"{config.resolve()} [gates]")
    assert rows["threads"] == ("2", "command line")
    assert rows["latency-batch"] == ("1", "default")


def test_relative_paths_resolve_against_the_config_folder(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(work / "ci" / "onnxpq.toml",
                    'model = "../models/m.onnx"\ndata = "val.npz"\ntarget = "targets/mine.toml"\n'
                    '[outputs]\noutput = "build/m.opt.onnx"\n')
    code, rows, _ = _show(capsys, "--config", str(config), "--report", "here.json")
    folder = config.resolve().parent
    assert code == 0
    assert rows["model"][0] == json.dumps(str(folder.parent / "models/m.onnx"))
    assert rows["data"][0] == json.dumps(str(folder / "val.npz"))
    assert rows["target"][0] == json.dumps(str(folder / "targets/mine.toml"))
    assert rows["output"][0] == json.dumps(str(folder / "build/m.opt.onnx"))
    assert rows["report"] == ('"here.json"', "command line")  # typed paths stay as typed


def test_a_typed_option_wins_even_when_it_equals_the_default(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write(work / "onnxpq.toml", "latency-runs = 7\n")
    code, rows, _ = _show(capsys, "--config", str(config), "--latency-runs", "50")
    assert code == 0 and rows["latency-runs"] == ("50", "command line")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latency-runz = 7\n", "unknown key 'latency-runz'; valid keys: .*latency-runs"),
        ("[gates]\nmax-acuracy-drop = 0.1\n", r"\[gates\]: unknown key 'max-acuracy-drop'; valid keys: max-accuracy-drop"),
        ("max-accuracy-drop = 0.1\n", r"unknown key 'max-accuracy-drop'; it belongs in \[gates\]"),
        ("[outputs]\ntarget = 'cpu'\n", r"unknown key 'target'; it belongs outside \[gates\] and \[outputs\]"),
        ("[package]\ntune-budgett = 3\n", r"\[package\]: unknown key 'tune-budgett'; valid keys: .*tune-budget"),
        ("latency-runs = 'many'\n", "'latency-runs': must be an integer, got a string"),
        ("latency-runs = true\n", "'latency-runs': must be an integer, got a boolean"),
        ("[gates]\nmax-accuracy-drop = '1%'\n", "'max-accuracy-drop': must be a number, got a string"),
        ("nonfinite-weights = 'ignore'\n", "'ignore' is not one of refuse, warn"),
        ("gates = 3\n", "'gates' must be a table"),
        ("target = \n", "invalid TOML"),
    ],
)
def test_bad_config_exits_2_naming_the_problem(
    work: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = _write(work / "onnxpq.toml", text)
    code, _, err = _show(capsys, "--config", str(config))
    assert code == 2
    assert err.count("\n") == 1 and re.search(message, err), err


def test_missing_config_file_exits_2(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _show(capsys, "--config", "nope.toml")
    assert code == 2 and "nope.toml: no such file" in err


def test_pyproject_tool_onnxpq_is_found_from_a_subfolder(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pyproject = _write(work / "pyproject.toml", '[project]\nname = "x"\n[tool.onnxpq]\ndata = "data/val.npz"\n'
                                                '[tool.onnxpq.gates]\nmax-accuracy-drop = 0.05\n')
    (work / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(work / "src" / "deep")
    code, rows, _ = _show(capsys)
    assert code == 0
    assert rows["data"] == (json.dumps(str(work.resolve() / "data/val.npz")), f"{pyproject.resolve()} [tool.onnxpq]")
    assert rows["max-accuracy-drop"][1] == f"{pyproject.resolve()} [tool.onnxpq.gates]"


def test_explicit_config_replaces_the_pyproject_one(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(work / "pyproject.toml", "[tool.onnxpq]\nlatency-runs = 3\n")
    config = _write(work / "other.toml", "threads = 2\n")
    code, rows, _ = _show(capsys, "--config", str(config))
    assert code == 0 and rows["latency-runs"] == ("50", "default") and rows["threads"][0] == "2"


def test_nearest_pyproject_without_tool_onnxpq_means_no_config(
    work: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(work / "pyproject.toml", "[tool.onnxpq]\nlatency-runs = 3\n")
    _write(work / "sub" / "pyproject.toml", '[project]\nname = "sub"\n')
    monkeypatch.chdir(work / "sub")
    code, rows, _ = _show(capsys)
    assert code == 0 and rows["latency-runs"] == ("50", "default")


def test_command_table_overrides_the_shared_part_for_that_command_only(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(work / "onnxpq.toml", 'latency-runs = 7\n[optimize]\nlatency-runs = 9\n[package]\nlatency-runs = 11\n')
    code, rows, _ = _show(capsys, "--config", str(config))
    assert code == 0 and rows["latency-runs"] == ("9", f"{config.resolve()} [optimize]")


def test_optimize_runs_from_a_config_alone(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _model(work / "models" / "m.onnx")
    (work / "build").mkdir()
    config = _write(work / "onnxpq.toml", 'model = "models/m.onnx"\npipeline = "eliminate-identity"\nlatency-runs = 2\n'
                                          '[outputs]\noutput = "build/m.opt.onnx"\nreport = "build/r.json"\n')
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["optimize", "--config", str(config), "-q"]) == 0
    report = json.loads((work / "build" / "r.json").read_text())
    assert report["pipeline"] == "eliminate-identity" and report["optimized"]["latency_ms"]["runs"] == 2
    assert (work / "build" / "m.opt.onnx").is_file()


def test_command_line_overrides_config_for_optimize(work: Path) -> None:
    _model(work / "m.onnx")
    config = _write(work / "onnxpq.toml", 'model = "m.onnx"\npipeline = "eliminate-identity"\nlatency-runs = 2\n'
                                          '[outputs]\noutput = "a.onnx"\nreport = "r.json"\n')
    assert main(["optimize", "--config", str(config), "--pipeline", "eliminate-dead", "-o", "b.onnx", "-q"]) == 0
    assert json.loads((work / "r.json").read_text())["pipeline"] == "eliminate-dead"
    assert (work / "b.onnx").is_file() and not (work / "a.onnx").exists()


def test_required_arguments_missing_everywhere_exit_2(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["optimize"])
    assert caught.value.code == 2
    assert "required: model, -o/--output" in capsys.readouterr().err
