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


def test_page_refers_to_no_external_url(page: str) -> None:
    urls = re.findall(r"https?://[^\s\"'<>)]*", page)
    assert set(urls) <= {"http://www.w3.org/2000/svg"}
    for tag in ("<script", "<link", "<img", "<iframe", "@import", "url("):
        assert tag not in page
