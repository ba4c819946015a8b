"""Tests for onnxpq.core.progress: bars draw on a terminal, and stay silent in CI, into a pipe, or when switched off."""

from __future__ import annotations

import io

import pytest

from onnxpq.core.instruments import ProgressDisplay
from onnxpq.core.progress import ProgressBar, progress, progress_allowed, progress_switch, set_progress


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _not_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests run in CI too: start each one outside it, and let it set CI itself."""
    monkeypatch.delenv("CI", raising=False)


def _run(stream: io.StringIO, steps: int = 5) -> None:
    with progress("calibration", total=steps, stream=stream, min_interval=0.0) as bar:
        for _ in range(steps):
            bar.advance()


def test_enabled_bar_writes_label_count_and_final_newline() -> None:
    stream = FakeTerminal()
    _run(stream)
    text = stream.getvalue()
    assert "calibration [" in text
    assert "5/5" in text
    assert text.endswith("\n")


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_ci_environment_writes_nothing(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    stream = FakeTerminal()
    _run(stream)
    assert stream.getvalue() == ""


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_ci_set_to_false_still_draws(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    stream = FakeTerminal()
    _run(stream)
    assert "5/5" in stream.getvalue()


def test_not_a_terminal_writes_nothing() -> None:
    stream = io.StringIO()  # isatty() is False, as for a pipe or a log file
    _run(stream)
    assert stream.getvalue() == ""


def test_switch_off_writes_nothing_and_is_restored() -> None:
    stream = FakeTerminal()
    with progress_switch(False):
        assert not progress_allowed(stream)
        _run(stream)
    assert stream.getvalue() == ""
    assert progress_allowed(stream)


def test_set_progress_false_silences_the_pass_status_line_too() -> None:
    stream = FakeTerminal()
    set_progress(False)
    try:
        assert ProgressDisplay(3, stream=stream).enabled is False
    finally:
        set_progress(None)
    assert ProgressDisplay(3, stream=stream).enabled is True


def test_redraws_are_rate_limited() -> None:
    stream = FakeTerminal()
    with progress("latency", total=1000, stream=stream, min_interval=3600.0) as bar:
        for _ in range(1000):
            bar.advance()
    # first draw, the finished draw, and the closing line: not one write per step
    assert stream.getvalue().count("\r") <= 3
    assert "1000/1000" in stream.getvalue()


def test_unknown_total_shows_a_count() -> None:
    bar = ProgressBar("explore", None, stream=FakeTerminal(), enabled=True)
    bar.advance(7)
    assert bar.line().startswith("explore: 7 (")


def test_update_sets_a_total_learned_late() -> None:
    stream = FakeTerminal()
    with progress("calibration", stream=stream, min_interval=0.0) as bar:
        bar.update(2, 8)
    assert "2/8" in stream.getvalue()
    assert " 25%" in stream.getvalue()


def test_bar_closes_its_line_when_the_step_raises() -> None:
    stream = FakeTerminal()
    with pytest.raises(RuntimeError), progress("sensitivity", total=4, stream=stream, min_interval=0.0) as bar:
        bar.advance()
        raise RuntimeError("boom")
    assert stream.getvalue().endswith("\n")
    assert "1/4" in stream.getvalue()


def _tiny_relu_model():  # noqa: ANN202 - onnx_ir.Model
    import onnx.parser
    import onnx_ir as ir

    proto = onnx.parser.parse_model(
        '<ir_version: 10, opset_import: ["" : 21]>\ng (float[N,4] x) => (float[N,4] y) { y = Relu(x) }'
    )
    return ir.from_proto(proto)


@pytest.mark.parametrize("ci", [None, "true"])
def test_calibration_draws_a_bar_on_a_terminal_only_outside_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    import numpy as np

    from onnxpq.passes.quantize.calibration import calibrate

    if ci is not None:
        monkeypatch.setenv("CI", ci)
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    ranges = calibrate(_tiny_relu_model(), ["y"], {"x": x}, batch_size=8)
    assert ranges["y"].hi > 0
    if ci is None:
        assert "calibration [" in terminal.getvalue()
        assert "5/5" in terminal.getvalue()  # 40 samples / 8 per batch, one minmax pass
    else:
        assert terminal.getvalue() == ""


def test_the_cli_quiet_flag_holds_for_its_own_call_only(capsys: pytest.CaptureFixture[str]) -> None:
    """``main([..., "-q"])`` from Python (a build script, a test) once left progress off for the whole process."""
    from onnxpq.cli import main

    stream = FakeTerminal()
    assert main(["passes", "-q"]) == 0
    assert progress_allowed(stream)
    assert main(["optimize", "no-such-model.onnx", "-o", "out.onnx", "-q"]) == 2  # also after an error
    assert progress_allowed(stream)
