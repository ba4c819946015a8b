"""``--isolate`` and :func:`onnxpq.isolation.check_model_isolated`: untrusted models load and first-run in a limited child.

A model asking for more memory than ``--isolate-memory`` or running longer
than ``--isolate-timeout`` is refused with exit 2 and one line naming the
limit; nothing is written and the input is unchanged. A normal model gives
the same result with and without isolation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hostile_corpus import WEIGHT, build_case, constant_of_shape, model_of, tiny, vi
from onnxpq import isolation
from onnxpq.cli import main
from onnxpq.errors import IsolationError, UnsafeModelError

#: 2**29 float32 = 2 GiB asked at run time, against a 1 GiB limit.
HUGE_COUNT = 2**29
LIMIT_MIB = 1024


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def endless_loop() -> onnx.ModelProto:
    """y = x @ W, then a Loop of 10**15 iterations adding 1: legal, and never finishes."""
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "one"], ["acc_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("acc_in", shape=["N", 3])],
        [vi("cond_out", TensorProto.BOOL, []), vi("acc_out", shape=["N", 3])],
    )  # fmt: skip
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Loop", ["trip", "", "h"], ["y"], body=body)],
        [vi("x", shape=["N", 4])], [vi("y", shape=["N", 3])],
        [numpy_helper.from_array(WEIGHT, "W"), numpy_helper.from_array(np.array(10**15, np.int64), "trip"),
         numpy_helper.from_array(np.ones(1, np.float32), "one")],
    )  # fmt: skip


def write(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(model, path)
    return path


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxpq: error: "), err
    return lines[0]


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def optimize_argv(model: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["optimize", str(model), "-o", str(out_dir / "o.onnx"), "--report", str(out_dir / "r.json"),
            "--pipeline", "eliminate-dead", "--latency-runs", "2", *extra]  # fmt: skip


def test_model_over_the_memory_limit_exits_2_naming_the_limit(tmp_path: Path, out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(constant_of_shape(HUGE_COUNT), tmp_path / "in")
    before = digest(tmp_path / "in")
    code = main(optimize_argv(model, out_dir, "--isolate", "--isolate-memory", str(LIMIT_MIB)))
    line = refused_line(code, capsys.readouterr().err)
    assert f"more than {LIMIT_MIB} MiB of memory (--isolate-memory)" in line
    assert os.listdir(out_dir) == []
    assert digest(tmp_path / "in") == before


def test_model_over_the_time_limit_exits_2_naming_the_limit(tmp_path: Path, out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(endless_loop(), tmp_path / "in")
    start = time.monotonic()
    code = main(optimize_argv(model, out_dir, "--isolate", "--isolate-timeout", "3"))
    line = refused_line(code, capsys.readouterr().err)
    assert "longer than 3 s (--isolate-timeout)" in line
    assert time.monotonic() - start < 60
    assert os.listdir(out_dir) == []


def test_validate_isolates_the_reference_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tiny(), tmp_path / "good")
    huge = write(constant_of_shape(HUGE_COUNT), tmp_path / "huge")
    code = main(["validate", str(good), "--reference", str(huge), "--latency-runs", "2",
                 "--isolate", "--isolate-memory", str(LIMIT_MIB)])  # fmt: skip
    assert "(--isolate-memory)" in refused_line(code, capsys.readouterr().err)


def test_normal_model_gives_the_same_output_with_and_without_isolation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write(tiny(), tmp_path / "in")
    plain, isolated = tmp_path / "plain", tmp_path / "isolated"
    plain.mkdir()
    isolated.mkdir()
    assert main(optimize_argv(model, plain)) == 0
    assert main(optimize_argv(model, isolated, "--isolate")) == 0, capsys.readouterr().err
    assert (plain / "o.onnx").read_bytes() == (isolated / "o.onnx").read_bytes()
    assert sorted(os.listdir(plain)) == sorted(os.listdir(isolated))


def test_refusal_inside_the_child_is_the_same_line_as_without_isolation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    build_case("ext-dotdot", tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    model = Path("in/model/m.onnx")  # relative: the child must name it the same way
    lines = []
    for extra in ((), ("--isolate",)):
        out = tmp_path / f"out{len(extra)}"
        out.mkdir()
        lines.append(refused_line(main(optimize_argv(model, out, *extra)), capsys.readouterr().err))
        assert os.listdir(out) == []
    assert lines[0] == lines[1]


def test_python_api_reports_a_run_within_limits(tmp_path: Path) -> None:
    result = isolation.check_model_isolated(write(tiny(), tmp_path / "in"), memory_mib=LIMIT_MIB, timeout_s=120)
    assert result.ran and result.memory_mib == LIMIT_MIB
    assert 0 < result.peak_rss_mib < LIMIT_MIB


def test_python_api_raises_isolation_error_with_the_limit(tmp_path: Path) -> None:
    with pytest.raises(IsolationError) as caught:
        isolation.check_model_isolated(write(constant_of_shape(HUGE_COUNT), tmp_path / "in"), memory_mib=LIMIT_MIB)
    assert caught.value.limit == "memory"


def test_python_api_reraises_the_childs_error_class(tmp_path: Path) -> None:
    with pytest.raises(UnsafeModelError, match=r"'\.\.'"):
        isolation.check_model_isolated(build_case("ext-dotdot", tmp_path / "in"))


@pytest.mark.parametrize("number", [signal.SIGSEGV, signal.SIGKILL])
def test_a_child_killed_by_a_signal_is_named(tmp_path: Path, number: int) -> None:
    with pytest.raises(IsolationError, match=signal.Signals(number).name) as caught:
        isolation._judge(tmp_path / "m.onnx", -number, "", "", 1024, 10.0, True)
    assert caught.value.limit == "signal"


def test_default_memory_limit_grows_with_the_model(tmp_path: Path) -> None:
    small = write(tiny(), tmp_path / "small")
    big = write(tiny(np.zeros((4, 3 * 2**20), np.float32)), tmp_path / "big")  # 48 MiB inline
    assert isolation.default_memory_mib(small) == isolation.BASE_MEMORY_MIB
    assert isolation.default_memory_mib(big) >= isolation.BASE_MEMORY_MIB + 4 * 48
