"""``onnxpq optimize`` on bad input: exit code 2, one error line, nothing written, the input untouched.

The contract (DESIGN.md, "Errors and exit codes" and "I/O guarantees") is
checked for every case: exit status 2; stderr is exactly one non-empty line
starting with ``onnxpq: error:`` and no traceback; the output folder is empty
afterwards (no model, data, report or ``.onnxpq-tmp-*`` leftovers); every file
on the input side (the model, its external data, files it points to) has the
same bytes as before.

Bad models are built in the test (conftest.py). Most cases call
``onnxpq.cli.main`` in-process (stderr through capsys); a few run
``python -m onnxpq.cli`` as a real subprocess to prove the process-level
behaviour.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxpq.cli import main

SUBPROCESS_TIMEOUT_S = 120


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    """main() reconfigures the root logger onto the captured stderr; undo that after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _optimize_argv(
    model: Path,
    out_dir: Path,
    *extra: str,
    target: str = "cpu",
    output: Path | None = None,
    report: Path | None = None,
    latency_runs: str = "2",
) -> list[str]:
    """The command line of the contract, with one piece swapped where a case needs it."""
    output = output if output is not None else out_dir / "out.onnx"
    report = report if report is not None else out_dir / "r.json"
    return [
        "optimize", str(model), "-t", target, "-o", str(output),
        "--report", str(report), "--latency-runs", latency_runs, *extra,
    ]  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under root: a symlink's target, 'dir', or a file's sha256."""
    entries: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                entries[key] = f"symlink -> {os.readlink(path)}"
            elif path.is_dir():
                entries[key] = "dir"
            else:
                entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def _in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _subprocess(argv: list[str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "onnxpq.cli", *argv],
        cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False,
    )  # fmt: skip
    return done.returncode, done.stderr


def _assert_refused(code: int, stderr: str, out_dir: Path, input_root: Path, before: dict[str, str]) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("onnxpq: error:") and lines[0][len("onnxpq: error:") :].strip(), stderr
    assert sorted(os.listdir(out_dir)) == []
    assert _snapshot(input_root) == before


# --------------------------------------------------------------------------- bad model files (in-process)


def test_malformed_model_exits_2_and_writes_nothing(
    malformed_model: Any, out_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(tmp_path / "in")
    code, err = _in_process(_optimize_argv(malformed_model.path, out_dir), capsys)
    _assert_refused(code, err, out_dir, tmp_path / "in", before)


def test_unsafe_external_data_exits_2_and_writes_nothing(
    unsafe_external_model: Any, out_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(tmp_path / "in")
    code, err = _in_process(_optimize_argv(unsafe_external_model.path, out_dir), capsys)
    _assert_refused(code, err, out_dir, tmp_path / "in", before)


# --------------------------------------------------------------------------- bad usage with a valid model (in-process)


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


#: case -> argv from (valid model, output folder, a scratch folder on the input side).
_BAD_USAGE: dict[str, Callable[[Path, Path, Path], list[str]]] = {
    "output-is-input": lambda model, out, _: _optimize_argv(model, out, output=model),
    "report-is-input": lambda model, out, _: _optimize_argv(model, out, report=model),
    "output-folder-missing": lambda model, out, _: _optimize_argv(model, out, output=out / "nowhere" / "out.onnx"),
    "unknown-target": lambda model, out, _: _optimize_argv(model, out, target="no-such-target"),
    "target-file-missing": lambda model, out, scratch: _optimize_argv(model, out, target=str(scratch / "missing.toml")),
    "bad-pipeline-text": lambda model, out, _: _optimize_argv(model, out, "--pipeline", "nope"),
    "unknown-pass-option": lambda model, out, _: _optimize_argv(model, out, "--pipeline", "fold-batchnorm{x=1}"),
    "data-missing-input-array": lambda model, out, scratch: _optimize_argv(
        model, out, "--data", str(_write_npz(scratch / "d.npz", other=np.zeros((2, 4), np.float32)))
    ),
    "data-not-an-npz": lambda model, out, scratch: _optimize_argv(
        model, out, "--data", str(_write_bytes(scratch / "d.npz", b"not a zip archive"))
    ),
    "data-file-missing": lambda model, out, scratch: _optimize_argv(model, out, "--data", str(scratch / "none.npz")),
    "max-accuracy-drop-out-of-range": lambda model, out, _: _optimize_argv(model, out, "--max-accuracy-drop", "5"),
    "latency-runs-zero": lambda model, out, _: _optimize_argv(model, out, latency_runs="0"),
}


@pytest.mark.parametrize("case", list(_BAD_USAGE))
def test_bad_usage_with_a_valid_model_exits_2_and_writes_nothing(
    case: str, tiny_model_path: Path, out_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scratch = tmp_path / "in" / "scratch"
    scratch.mkdir()
    argv = _BAD_USAGE[case](tiny_model_path, out_dir, scratch)
    before = _snapshot(tmp_path / "in")
    code, err = _in_process(argv, capsys)
    _assert_refused(code, err, out_dir, tmp_path / "in", before)


@pytest.mark.parametrize(
    "where",
    [
        "initializer",
        "constant",
        "function",
    ],
)
def test_output_whose_data_file_is_the_inputs_data_exits_2(
    where: str, external_weight_model: Callable[..., Path], out_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = external_weight_model(tmp_path / "in" / "model", where, "out.onnx.data")
    before = _snapshot(tmp_path / "in")
    code, err = _in_process(_optimize_argv(model, out_dir, output=model.parent / "out.onnx"), capsys)
    _assert_refused(code, err, out_dir, tmp_path / "in", before)


# --------------------------------------------------------------------------- real processes


@pytest.mark.parametrize("malformed_model", ["empty-file", "random-bytes"], indirect=True)
def test_malformed_model_process_exits_2(malformed_model: Any, out_dir: Path, tmp_path: Path) -> None:
    before = _snapshot(tmp_path / "in")
    code, err = _subprocess(_optimize_argv(malformed_model.path, out_dir), tmp_path)
    _assert_refused(code, err, out_dir, tmp_path / "in", before)


@pytest.mark.parametrize("unsafe_external_model", ["symlinked-file", "dotdot-location"], indirect=True)
def test_unsafe_external_data_process_exits_2(unsafe_external_model: Any, out_dir: Path, tmp_path: Path) -> None:
    before = _snapshot(tmp_path / "in")
    code, err = _subprocess(_optimize_argv(unsafe_external_model.path, out_dir), tmp_path)
    _assert_refused(code, err, out_dir, tmp_path / "in", before)


def test_output_onto_input_process_exits_2(tiny_model_path: Path, out_dir: Path, tmp_path: Path) -> None:
    before = _snapshot(tmp_path / "in")
    code, err = _subprocess(_BAD_USAGE["output-is-input"](tiny_model_path, out_dir, tmp_path), tmp_path)
    _assert_refused(code, err, out_dir, tmp_path / "in", before)


@pytest.mark.parametrize("malformed_model", ["truncated-model"], indirect=True)
def test_debug_prints_the_traceback(malformed_model: Any, out_dir: Path, tmp_path: Path) -> None:
    before = _snapshot(tmp_path / "in")
    code, err = _subprocess([*_optimize_argv(malformed_model.path, out_dir), "--debug"], tmp_path)
    assert code == 2, err
    assert "Traceback (most recent call last)" in err
    assert "ModelLoadError" in err
    assert err.splitlines()[-1].startswith("onnxpq: error:")
    assert os.listdir(out_dir) == []
    assert _snapshot(tmp_path / "in") == before


def test_good_model_process_exits_0_and_writes_model_and_report(tiny_model_path: Path, out_dir: Path, tmp_path: Path) -> None:
    before = _snapshot(tmp_path / "in")
    code, err = _subprocess(_optimize_argv(tiny_model_path, out_dir), tmp_path)
    assert code == 0, err
    assert "Traceback" not in err
    assert sorted(os.listdir(out_dir)) == ["out.onnx", "r.json"]
    report = json.loads((out_dir / "r.json").read_text(encoding="utf-8"))
    assert report["target"]["name"] == "cpu"
    assert report["gate"]["passed"] is True
    assert _snapshot(tmp_path / "in") == before
