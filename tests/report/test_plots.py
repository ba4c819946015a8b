"""Tests for onnxpq.report.plots: matplotlib SVG made safe to inline, and the per-layer error plot."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("matplotlib", reason="matplotlib (extra [report]) is not installed")

from onnxpq.report.plots import MAX_LAYER_BARS, inline_svg, layer_error_svg  # noqa: E402

_SVG = (
    '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"\n'
    ' "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
    '<svg xmlns:xlink="http://www.w3.org/1999/xlink" width="10pt" height="10pt" xmlns="http://www.w3.org/2000/svg">'
    '<metadata><rdf:RDF xmlns:dc="http://purl.org/dc/elements/1.1/"></rdf:RDF></metadata>'
    '<defs><clipPath id="p1"><rect/></clipPath><path id="g1" d="M0 0"/></defs>'
    '<g clip-path="url(#p1)"><use xlink:href="#g1"/></g></svg>'
)


def _row(name: str, sqnr: float | None, added: float = 0.0) -> dict:
    return {"name": name, "error": {"measured": True, "sqnr_db": sqnr, "identical": sqnr is None, "added_nsr": added}}


def test_inline_svg_drops_prolog_and_metadata() -> None:
    text = inline_svg(_SVG, "a", "alt text")
    assert text.startswith("<svg")
    assert "<metadata" not in text and "purl.org" not in text and "DOCTYPE" not in text


def test_inline_svg_prefixes_ids_and_references() -> None:
    text = inline_svg(_SVG, "a", "alt text")
    assert set(re.findall(r'id="([^"]+)"', text)) == {"a-p1", "a-g1", "a-title"}
    assert 'clip-path="url(#a-p1)"' in text
    assert 'xlink:href="#a-g1"' in text


def test_two_plots_on_one_page_share_no_id() -> None:
    ids_a = set(re.findall(r'id="([^"]+)"', inline_svg(_SVG, "a", "x")))
    ids_b = set(re.findall(r'id="([^"]+)"', inline_svg(_SVG, "b", "x")))
    assert not ids_a & ids_b


def test_inline_svg_is_an_accessible_image() -> None:
    text = inline_svg(_SVG, "a", "SQNR <per> layer")
    assert 'role="img"' in text and 'aria-labelledby="a-title"' in text
    assert '<title id="a-title">SQNR &lt;per&gt; layer</title>' in text


def test_layer_error_plot_names_every_layer_in_its_alt_text() -> None:
    svg, caption = layer_error_svg([_row("conv1", None), _row("conv2", 31.5, 1e-3), _row("fc", 40.0, 1e-4)])
    title = re.search(r"<title[^>]*>(.*?)</title>", svg).group(1)
    assert "conv1: identical" in title and "conv2: 31.5 dB" in title and "fc: 40.0 dB" in title
    assert "3 layer(s)" in caption
    assert ">conv2<" in svg  # text stays text (svg.fonttype none)


def test_layer_error_plot_needs_measured_layers() -> None:
    assert layer_error_svg([]) is None
    assert layer_error_svg([{"name": "a", "error": {"measured": False, "reason": "skipped"}}]) is None


def test_many_layers_plot_only_the_worst() -> None:
    rows = [_row(f"layer{i}", 10.0 + i) for i in range(MAX_LAYER_BARS + 20)]
    svg, caption = layer_error_svg(rows)
    assert f"{MAX_LAYER_BARS} worst of {MAX_LAYER_BARS + 20}" in caption
    assert ">layer0<" in svg and f">layer{MAX_LAYER_BARS + 19}<" not in svg
