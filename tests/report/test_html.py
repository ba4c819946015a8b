"""Tests for onnxpq.report.html: the self-contained page rendered from a real optimize report."""

from __future__ import annotations

import copy
import html
import re
from collections.abc import Callable
from typing import Any

import pytest

from onnxpq.report.html import render_html


@pytest.fixture(scope="module")
def report(build_report: Callable[..., Any]) -> dict[str, Any]:
    return build_report().report


@pytest.fixture(scope="module")
def page(report: dict[str, Any]) -> str:
    return render_html(report)


def test_page_is_one_html_document(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert page.rstrip().endswith("</html>")


def test_page_has_the_summary_table(page: str) -> None:
    assert '<table id="summary">' in page
    for figure in ("Accuracy", "Latency p50", "Latency p90", "Size", "MACs / sample", "Bit-ops / sample"):
        assert f"<td>{figure}</td>" in page


def test_page_shows_the_pipeline_text(page: str, report: dict[str, Any]) -> None:
    assert f"<code>{html.escape(report['pipeline'])}</code>" in page


def test_page_lists_every_pass(page: str, report: dict[str, Any]) -> None:
    for entry in report["passes"]:
        assert f"<td><code>{html.escape(entry['pipeline'])}</code></td>" in page


def test_page_written_by_optimize_equals_render_html(build_report: Callable[..., Any]) -> None:
    built = build_report()
    assert built.html_path.read_text(encoding="utf-8") == render_html(built.report)


def test_identical_outputs_show_infinite_sqnr(page: str) -> None:
    assert "∞ (identical)" in page


def test_estimated_latency_is_marked_in_the_summary(report: dict[str, Any]) -> None:
    estimated = copy.deepcopy(report)
    for side in ("baseline", "optimized"):
        estimated[side]["latency_ms"]["estimated"] = True
    assert "(est.)" in render_html(estimated)
    assert "(est.)" not in render_html(report)


@pytest.mark.parametrize("model_name", ["a<b>.onnx", "<script>.onnx"])
def test_model_path_with_markup_is_escaped(build_report: Callable[..., Any], model_name: str) -> None:
    page = render_html(build_report(model_name).report)
    assert html.escape(model_name) in page
    assert model_name not in page
    assert "<script" not in page
    assert "<b>.onnx" not in page


#: XML namespace names in inline SVG: identifiers, never fetched.
_NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def _assert_self_contained(page: str) -> None:
    urls = re.findall(r"https?://[^\s\"'<>)]*", page)
    assert set(urls) <= _NAMESPACES
    for tag in ("<script", "<link", "<img", "<iframe", "@import"):
        assert tag not in page
    assert re.findall(r"url\((?!#)", page) == []  # only same-page references (SVG clip paths)


def test_page_refers_to_no_external_url(page: str) -> None:
    _assert_self_contained(page)


def _layer(name: str, sqnr: float | None, added: float, *, out: tuple[int, int] = (16, 16)) -> dict[str, Any]:
    return {
        "name": name, "op_type": "Conv", "domain": "",
        "inputs": [{"name": "x", "shape": ["N", 3, 8, 8]}, {"name": "w", "shape": [16, 3, 3, 3]}],
        "outputs": [{"name": f"{name}_out", "shape": ["N", out[1], 8, 8]}],
        "params": 448, "macs": 27648, "params_before": 432, "macs_before": 27648,
        "weight": {"format": "qdq", "bits": 4, "granularity": "per-channel", "symmetric": True, "density": 0.75},
        "activation_bits": 8, "channels": {"out": list(out), "in": [3, 3]},
        "error": {"measured": True, "tensor": f"{name}_out", "sqnr_db": sqnr, "identical": sqnr is None,
                  "nsr": 0.0, "rel_rms": 0.0, "added_nsr": added, "non_finite": False},
    }


_PARETO = {
    "primary_cost": "latency_ms", "quality_measure": "top-1 agreement", "chosen": "p-b", "latency": "measured",
    "points": [
        {"id": "p-a", "kind": "planned", "quality": 0.99, "costs": {"latency_ms": 2.0, "weight_bits": 800},
         "on_frontier": {"latency_ms": True, "weight_bits": True}},
        {"id": "p-b", "kind": "planned", "quality": 0.97, "costs": {"latency_ms": 1.0, "weight_bits": 400},
         "on_frontier": {"latency_ms": True, "weight_bits": True}},
        {"id": "p-c", "kind": "planned", "quality": 0.95, "costs": {"latency_ms": 1.5, "weight_bits": 600},
         "on_frontier": {"latency_ms": False, "weight_bits": False}},
        {"id": "u-int8", "kind": "baseline", "quality": 0.96, "costs": {"latency_ms": 1.2, "weight_bits": 400},
         "on_frontier": {"latency_ms": False, "weight_bits": False}},
    ],
}


@pytest.fixture(scope="module")
def rich_report(report: dict[str, Any]) -> dict[str, Any]:
    """The real report with a per-layer table and a Pareto document added."""
    rich = copy.deepcopy(report)
    rich["layers"] = [_layer("conv<1>", 35.2, 3e-4, out=(16, 8)), _layer("conv2", None, 0.0)]
    rich["layer_error"] = {"measured": 2, "samples": 32, "seconds": 0.1, "skipped": None}
    rich["pareto"] = _PARETO
    return rich


def test_layer_table_has_headers_and_a_row_per_layer(rich_report: dict[str, Any]) -> None:
    page = render_html(rich_report)
    assert '<table class="layers">' in page
    for header in ("Layer", "Input shapes", "Output shape", "Params", "MACs / sample", "Weights", "Zeros",
                   "Out channels kept", "Output SQNR (dB)", "Added noise (NSR)"):
        assert f'<th scope="col">{header}</th>' in page
    assert '<th scope="row"><code>conv&lt;1&gt;</code></th>' in page
    assert "int4 qdq per-channel" in page
    assert "8 of 16 (50%)" in page
    assert "25.0%" in page  # zeros = 1 - density
    assert "432 → 448" in page
    assert "∞ (identical)" in page and "35.2" in page


def test_layer_that_added_most_noise_is_shaded(rich_report: dict[str, Any]) -> None:
    page = render_html(rich_report)
    assert re.search(r'<tr class="worst"><th scope="row"><code>conv&lt;1&gt;</code>', page)
    assert not re.search(r'<tr class="worst"><th scope="row"><code>conv2</code>', page)


def test_layer_plot_and_pareto_plot_are_inline_svg_with_alt_text(rich_report: dict[str, Any]) -> None:
    pytest.importorskip("matplotlib")
    page = render_html(rich_report)
    assert '<figure id="layer-error-plot"><svg' in page
    assert '<figure id="pareto-plot"><svg' in page
    assert page.count('role="img"') >= 3  # ratio chart, layer plot, Pareto plot
    assert '<title id="layer-error-title">' in page and '<title id="pareto-title">' in page
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "duplicate ids between inline plots"
    _assert_self_contained(page)


def test_broken_pareto_field_is_reported_not_fatal(rich_report: dict[str, Any]) -> None:
    broken = copy.deepcopy(rich_report)
    broken["pareto"] = {"points": "nonsense"}
    page = render_html(broken)
    assert "<h2>Pareto frontier</h2><p class=\"muted\">Not drawn:" in page
    assert '<table id="summary">' in page


def test_report_without_layers_says_why(report: dict[str, Any]) -> None:
    bare = copy.deepcopy(report)
    bare["layers"], bare["layer_error"] = [], {"measured": 0, "skipped": "skipped on request"}
    assert "No per-layer table: skipped on request." in render_html(bare)


def test_every_table_has_a_caption_and_header_cells(rich_report: dict[str, Any]) -> None:
    page = render_html(rich_report)
    tables = re.findall(r"<table.*?</table>", page, re.S)
    assert len(tables) >= 4
    for table in tables:
        assert "<caption>" in table
        assert "<th" in table
