"""Plots for the HTML report: matplotlib figures inlined as SVG, safe to put several on one page.

matplotlib (extra ``[report]``) draws; :func:`inline_svg` makes its SVG fit a
self-contained, accessible page:

* the XML prolog, DOCTYPE and ``<metadata>`` block (which names external RDF
  and Dublin Core namespaces) are dropped; the ``xlink`` namespace
  declaration stays (a namespace name, never fetched);
* every ``id`` is prefixed (``<prefix>-``) and so is every reference to it
  (``href="#..."``, ``url(#...)``), so glyph and clip-path ids of two plots on
  one page never collide;
* the root ``<svg>`` gets ``role="img"``, ``aria-labelledby`` and a
  ``<title>`` with the plot's description (the alt text);
* text is kept as ``<text>`` (``svg.fonttype = "none"``): smaller, and
  readable by screen readers and searches; ``svg.hashsalt`` is fixed so the
  same data gives the same SVG.

Without matplotlib, :func:`layer_error_svg` returns None and the page says
how to get the plots.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["have_matplotlib", "inline_svg", "layer_error_svg", "MAX_LAYER_BARS"]

#: Layers shown in the per-layer error plot; beyond this, the worst ones (lowest SQNR) are shown.
MAX_LAYER_BARS = 60

_ID = re.compile(r'\bid="([^"]+)"')
_HREF = re.compile(r'((?:xlink:)?href)="#([^"]+)"')
_URL = re.compile(r"url\(#([^)]+)\)")
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (the ``[report]`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def inline_svg(svg: str, prefix: str, description: str) -> str:
    """matplotlib's SVG text, ready to inline in an HTML page (see the module docstring)."""
    start = svg.find("<svg")
    if start < 0:
        raise ValueError("not SVG text: no <svg> element")
    text = _METADATA.sub("", svg[start:])
    text = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', text)
    text = _HREF.sub(lambda m: f'{m.group(1)}="#{prefix}-{m.group(2)}"', text)
    text = _URL.sub(lambda m: f"url(#{prefix}-{m.group(1)})", text)
    title_id = f"{prefix}-title"
    root_end = text.find(">")
    root = text[:root_end]
    if root.endswith("/"):
        raise ValueError("empty SVG")
    root += f' role="img" aria-labelledby="{title_id}"'
    return f'{root}><title id="{title_id}">{html.escape(description)}</title>{text[root_end + 1:]}'.strip()


def _figure_svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(fig)
    return buffer.getvalue()


def _matplotlib() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    matplotlib.rcParams["svg.hashsalt"] = "onnxpq"
    import matplotlib.pyplot as plt

    return plt


def layer_error_svg(layers: Sequence[dict[str, Any]], prefix: str = "layer-error") -> tuple[str, str] | None:
    """(inline SVG, caption) of the per-layer output SQNR; None without measured layers or matplotlib.

    One horizontal bar per measured layer (graph order, top to bottom): the
    SQNR of its output in the optimized model against the float reference,
    in dB (longer is better). The three layers that added the most noise
    are red. Identical outputs (infinite SQNR) are drawn at the axis limit
    and labelled "identical".
    """
    measured = [row for row in layers if row.get("error") and row["error"].get("measured")]
    if not measured or not have_matplotlib():
        return None
    caption = f"Output SQNR of {len(measured)} layer(s) in graph order"
    if len(measured) > MAX_LAYER_BARS:
        worst = sorted(measured, key=lambda r: math.inf if r["error"]["sqnr_db"] is None else r["error"]["sqnr_db"])
        keep = {id(r) for r in worst[:MAX_LAYER_BARS]}
        measured = [r for r in measured if id(r) in keep]
        caption = f"Output SQNR of the {MAX_LAYER_BARS} worst of {len(layers)} layers, in graph order"
    plt = _matplotlib()
    finite = [r["error"]["sqnr_db"] for r in measured if r["error"]["sqnr_db"] is not None]
    limit = max([*finite, 10.0]) * 1.15
    values = [limit if r["error"]["sqnr_db"] is None else r["error"]["sqnr_db"] for r in measured]
    added = sorted((r["error"].get("added_nsr") or 0.0 for r in measured), reverse=True)
    threshold = added[min(2, len(added) - 1)] if added and added[0] > 0 else math.inf
    colors = [
        "#cf222e" if (r["error"].get("added_nsr") or 0.0) >= threshold and threshold > 0 else "#0969da"
        for r in measured
    ]
    names = [str(r["name"]) if len(str(r["name"])) <= 40 else "…" + str(r["name"])[-39:] for r in measured]
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.28 * len(measured)))
    positions = list(range(len(measured)))
    ax.barh(positions, values, color=colors)
    for y, (value, row) in enumerate(zip(values, measured, strict=True)):
        label = "identical" if row["error"]["sqnr_db"] is None else f"{value:.1f}"
        ax.text(value, y, f" {label}", va="center", fontsize=7)
    ax.set_yticks(positions, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(min(0.0, *values), limit * 1.12)
    ax.set_xlabel("output SQNR vs float reference (dB, higher is better)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    description = (
        caption + ". " + "; ".join(
            f"{r['name']}: {'identical' if r['error']['sqnr_db'] is None else format(r['error']['sqnr_db'], '.1f') + ' dB'}"
            for r in measured[:MAX_LAYER_BARS]
        )
    )
    return inline_svg(_figure_svg(fig), prefix, description), caption + " (red: the three layers that added the most noise)."
