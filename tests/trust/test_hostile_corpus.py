"""Every case of the hostile-input corpus through the real ``onnxpq optimize``: one case, one test id.

A ``refuse`` case must exit 2 with one ``onnxpq: error:`` line matching the
case's reason, leave the output folder empty and the whole input folder
byte-for-byte unchanged. An ``ok`` case must exit 0, leave the input folder
unchanged, and write a model that computes what the input computes
(onnxruntime, the case's feeds). Most run in-process through
``onnxpq.cli.main``; a few also as a real ``python -m onnxpq.cli`` process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hostile_corpus import CASES, EXACT_PIPELINE, build_case, feeds_for
from onnxpq.cli import main

REFUSED = [name for name, case in CASES.items() if case.expect == "refuse"]
LEGAL = [name for name, case in CASES.items() if case.expect == "ok"]
SUBPROCESS_CASES = ["random-bytes", "nesting-past-protobuf-limit", "ext-hardlink", "nan-weight", "constant-of-shape-terabytes", "loop"]
SUBPROCESS_TIMEOUT_S = 180


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


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root: a symlink's target, 'dir', 'fifo', or a file's sha256 and link count."""
    entries: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                entries[key] = f"symlink -> {os.readlink(path)}"
            elif path.is_dir():
                entries[key] = "dir"
            elif path.is_fifo():
                entries[key] = "fifo"
            else:
                entries[key] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} x{path.stat().st_nlink}"
    return entries


def optimize_argv(model: Path, out_dir: Path, *extra: str, pipeline: str = EXACT_PIPELINE) -> list[str]:
    extra = tuple(arg.replace("{model_dir}", str(model.parent)) for arg in extra)
    return [
        "optimize", str(model), "-o", str(out_dir / "out.onnx"), "--report", str(out_dir / "r.json"),
        "--pipeline", pipeline, "--latency-runs", "2", *extra,
    ]  # fmt: skip


def assert_refused(code: int, stderr: str, reason: str, out_dir: Path, before: dict[str, str], in_dir: Path) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("onnxpq: error: ") and len(lines[0]) > len("onnxpq: error: ") + 10, stderr
    assert re.search(reason, lines[0], re.IGNORECASE), f"{lines[0]!r} does not match {reason!r}"
    assert sorted(os.listdir(out_dir)) == [], "something was left in the output folder"
    assert snapshot(in_dir) == before, "the input folder changed"


def run_outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_outputs(reference: Path, candidate: Path, feeds: dict[str, np.ndarray]) -> None:
    onnx.checker.check_model(str(candidate))
    want, got = run_outputs(reference, feeds), run_outputs(candidate, feeds)
    assert len(want) == len(got)
    for expected, actual in zip(want, got):
        assert expected.shape == actual.shape and expected.dtype == actual.dtype
        if expected.dtype.kind in "OSU":
            assert expected.tolist() == actual.tolist()
        else:
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    return tmp_path / "in", out


def test_corpus_has_at_least_40_cases() -> None:
    assert len(CASES) >= 40
    assert len(REFUSED) >= 30 and len(LEGAL) >= 10


@pytest.mark.parametrize("name", REFUSED)
def test_hostile_model_is_refused_with_one_line(name: str, dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    in_dir, out_dir = dirs
    case = CASES[name]
    model = build_case(case, in_dir)
    before = snapshot(in_dir)
    code = main(optimize_argv(model, out_dir, *case.argv))
    assert_refused(code, capsys.readouterr().err, case.reason, out_dir, before, in_dir)


#: validate measures what it is given: NaN/Inf weights are a finding there, not a refusal.
VALIDATE_REFUSED = [name for name in REFUSED if not CASES[name].name.endswith(("nan-weight", "inf-weight"))]


@pytest.mark.parametrize("name", VALIDATE_REFUSED)
def test_hostile_model_is_refused_by_validate(name: str, dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    in_dir, out_dir = dirs
    case = CASES[name]
    model = build_case(case, in_dir)
    reference = build_case("dead-code", in_dir.parent / "ref")
    before = snapshot(in_dir)
    code = main(["validate", str(model), "--reference", str(reference), "--report", str(out_dir / "r.json"), "--latency-runs", "2"])
    assert_refused(code, capsys.readouterr().err, case.reason, out_dir, before, in_dir)


@pytest.mark.parametrize("name", LEGAL)
def test_legal_model_optimizes_to_the_same_outputs(name: str, dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    in_dir, out_dir = dirs
    case = CASES[name]
    model = build_case(case, in_dir)
    before = snapshot(in_dir)
    code = main(optimize_argv(model, out_dir, *case.argv))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    assert snapshot(in_dir) == before
    assert {"out.onnx", "r.json"} <= set(os.listdir(out_dir))
    assert not [n for n in os.listdir(out_dir) if n.startswith(".onnxpq-tmp-")]
    assert_same_outputs(model, out_dir / "out.onnx", feeds_for(case))


@pytest.mark.parametrize("name", LEGAL)
def test_legal_model_survives_the_default_cpu_pipeline(name: str, dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The cpu target quantizes: outputs may differ, but the run must succeed and the output must run in onnxruntime."""
    in_dir, out_dir = dirs
    case = CASES[name]
    model = build_case(case, in_dir)
    before = snapshot(in_dir)
    argv = [a for a in optimize_argv(model, out_dir, *case.argv) if a not in ("--pipeline", EXACT_PIPELINE)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    assert snapshot(in_dir) == before
    onnx.checker.check_model(str(out_dir / "out.onnx"))
    feeds = feeds_for(case)
    want, got = run_outputs(model, feeds), run_outputs(out_dir / "out.onnx", feeds)
    assert [w.shape for w in want] == [g.shape for g in got]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_case_through_a_real_process(name: str, dirs: tuple[Path, Path], tmp_path: Path) -> None:
    in_dir, out_dir = dirs
    case = CASES[name]
    model = build_case(case, in_dir)
    before = snapshot(in_dir)
    done = subprocess.run(
        [sys.executable, "-m", "onnxpq.cli", *optimize_argv(model, out_dir, *case.argv)],
        cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False,
    )  # fmt: skip
    if case.expect == "refuse":
        assert_refused(done.returncode, done.stderr, case.reason, out_dir, before, in_dir)
    else:
        assert done.returncode == 0, done.stderr
        assert snapshot(in_dir) == before
        assert_same_outputs(model, out_dir / "out.onnx", feeds_for(case))
