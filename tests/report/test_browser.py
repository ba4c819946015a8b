"""The HTML report in a real headless Chromium: loads without console errors, and renders the summary table.

Uses Debian's ``chromium`` (``/usr/bin/chromium``) when it is installed and
installs nothing: without it the tests are skipped with the command that
installs it. Chromium's console goes to its standard error with
``--enable-logging=stderr --v=0`` as ``INFO:CONSOLE...`` lines; a control test
proves that a page with a console error is caught by the same check.
Set ``ONNXPQ_SCREENSHOT_DIR`` to keep the screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)

_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars",
    "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
]

#: The summary table's header background (#f6f8fa in the page's CSS).
_HEADER_RGB = (0xF6, 0xF8, 0xFA)

_CONSOLE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)")


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180, check=False,
    )


def _console_messages(stderr: str) -> list[str]:
    return [m.group(1) for line in stderr.splitlines() if (m := _CONSOLE.search(line))]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML report of the digits CNN quantized for the gpu target (per-layer table and plots), plus a Pareto field."""
    from importlib import resources

    from onnxpq.report.html import render_html
    from onnxpq.workflows import optimize

    folder = tmp_path_factory.mktemp("browser")
    data = resources.files("onnxpq") / "data"
    with resources.as_file(data / "digits_cnn.onnx") as model, resources.as_file(data / "digits_test.npz") as val:
        result = optimize(model, folder / "digits.onnx", target="gpu", pipeline="fold-batchnorm,quantize-static",
                          data=val, latency_runs=2, progress=False)
    report = result.report
    assert report["layer_error"]["measured"] > 0
    report["pareto"] = {
        "primary_cost": "bops", "quality_measure": "top-1 agreement", "chosen": "p-1", "latency": "estimated",
        "points": [
            {"id": f"p-{i}", "kind": "planned", "quality": q, "costs": {"bops": c, "weight_bits": c // 10},
             "on_frontier": {"bops": f, "weight_bits": f}}
            for i, (q, c, f) in enumerate([(0.99, 9_000, True), (0.98, 5_000, True), (0.95, 7_000, False)])
        ],
    }
    path = folder / "report.html"
    path.write_text(render_html(report), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def screenshot(page: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("shot")
    png = folder / "report.png"
    run = _chromium(page, folder / "profile", "--window-size=1400,1000", f"--screenshot={png}")
    keep = os.environ.get("ONNXPQ_SCREENSHOT_DIR")
    if keep and png.is_file():
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(keep) / "report.png")
    return png, run


def test_page_loads_without_console_messages(screenshot: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, run = screenshot
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_messages(run.stderr) == []


def test_console_errors_would_be_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>bad</title></head><body>'
                   '<script>console.error("deliberate"); notDefined();</script></body></html>')
    run = _chromium(bad, tmp_path / "profile", "--dump-dom")
    messages = _console_messages(run.stderr)
    assert any("deliberate" in m for m in messages)
    assert any("notDefined" in m for m in messages)


def test_screenshot_is_a_non_blank_png_showing_the_tables(screenshot: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    matplotlib_image = pytest.importorskip("matplotlib.image")
    png, run = screenshot
    assert png.is_file(), run.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = (matplotlib_image.imread(png)[..., :3] * 255).round().astype(np.uint8)
    assert pixels.shape[:2] == (1000, 1400)
    not_white = np.any(pixels < 250, axis=-1)
    assert not_white.mean() > 0.02, "the screenshot is (almost) blank"
    dark = np.all(pixels < 80, axis=-1)
    assert dark.mean() > 0.002, "no dark text in the screenshot"
    header = np.all(pixels == np.array(_HEADER_RGB, dtype=np.uint8), axis=-1)
    assert header.sum() > 1000, "no table header cells (#f6f8fa) in the first screen"


def test_dom_has_the_summary_table_and_the_plots(page: Path, tmp_path: Path) -> None:
    run = _chromium(page, tmp_path / "profile", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    summary = re.search(r'<table id="summary">.*?</table>', dom, re.S)
    assert summary is not None
    for figure in ("Accuracy", "Latency p50", "Size", "MACs / sample", "Bit-ops / sample"):
        assert f"<td>{figure}</td>" in summary.group(0)
    assert '<table class="layers">' in dom
    assert '<figure id="layer-error-plot"><svg' in dom
    assert '<figure id="pareto-plot"><svg' in dom
