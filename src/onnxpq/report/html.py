"""A self-contained HTML page of a report: summary, gate, ratio chart, per-layer table and plots, fidelity, passes.

No external assets, no JavaScript: inline CSS and inline SVG (a hand-drawn
bar chart of optimized/baseline ratios; matplotlib plots through
:mod:`onnxpq.report.plots`: per-layer output SQNR, and the Pareto plot when
the report has a ``pareto`` field), so the page opens anywhere (CI
artifacts, mail). Accessible: every table has a caption and header cells with
``scope``, every plot has a ``<title>`` (its alt text) and a caption.

The per-layer table shows at most :data:`MAX_TABLE_ROWS` layers (the JSON
report has them all); the worst ones by output SQNR are kept.
"""

from __future__ import annotations

import html
import logging
import math
from typing import Any

from onnxpq.report.plots import have_matplotlib, inline_svg, layer_error_svg
from onnxpq.report.summary import summary_rows

__all__ = ["render_html", "MAX_TABLE_ROWS"]

logger = logging.getLogger(__name__)

#: Layers listed in the page's per-layer table.
MAX_TABLE_ROWS = 1000

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1280px;color:#1b1f24;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;width:100%}th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}.muted{color:#57606a}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}code{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px}
caption{text-align:left;color:#57606a;padding:.2rem 0;caption-side:top}figure{margin:1rem 0}figcaption{color:#57606a}
table.layers{font-size:12px}table.layers td,table.layers th{padding:.2rem .4rem;white-space:nowrap}.wide{overflow-x:auto}
.worst{background:#ffebe9}svg{max-width:100%;height:auto}
td code{white-space:pre-wrap;overflow-wrap:anywhere}td.details{max-width:28rem;overflow-wrap:anywhere;text-align:left}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _num(value: float | int | None, fmt: str = "{:,}") -> str:
    return "—" if value is None else fmt.format(value)


def _summary(report: dict[str, Any]) -> str:
    rows = summary_rows(report)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        '<table id="summary"><caption>Baseline and optimized model, side by side</caption><thead><tr>'
        '<th scope="col">Figure</th><th scope="col">Baseline</th><th scope="col">Optimized</th>'
        '<th scope="col">Change</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
        f'<p class="muted">Latency: {_esc(report["optimized"]["latency_ms"]["method"])}</p>'
    )


def _chart(report: dict[str, Any]) -> str:
    ratios = [(k, v) for k, v in report["ratios"].items() if v is not None]
    if not ratios:
        return ""
    width, bar_h, gap, left = 520, 22, 10, 110
    scale = (width - left - 60) / max(1.0, max(v for _, v in ratios))
    height = len(ratios) * (bar_h + gap) + gap
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="optimized / baseline ratios">']
    for i, (name, value) in enumerate(ratios):
        y = gap + i * (bar_h + gap)
        color = "#1a7f37" if value <= 1.0 else "#cf222e"
        parts.append(f'<text x="0" y="{y + 15}" font-size="13">{_esc(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{value * scale:.1f}" height="{bar_h}" fill="{color}"/>')
        parts.append(f'<text x="{left + value * scale + 5:.1f}" y="{y + 15}" font-size="13">{value:.3f}x</text>')
    x1 = left + scale
    parts.append(f'<line x1="{x1:.1f}" x2="{x1:.1f}" y1="0" y2="{height}" stroke="#57606a" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return "<h2>Optimized / baseline</h2>" + "".join(parts)


def _fidelity(report: dict[str, Any]) -> str:
    f = report["fidelity"]
    sqnr = "∞ (identical)" if f["sqnr_db"] is None and f.get("identical") else _num(f["sqnr_db"], "{:.2f} dB")
    rows = [
        ("SQNR", sqnr),
        ("Cosine similarity", _num(f["cosine"], "{:.6f}")),
        ("Top-1 agreement", _num(f["top1_agreement"], "{:.2%}")),
        ("Max |error|", _num(f["max_abs_error"], "{:.3g}")),
        ("Samples", _num(f["samples"])),
    ]
    return (
        "<table><caption>Optimized outputs against the baseline's, on the validation data</caption>"
        + "".join(f'<tr><th scope="row">{_esc(a)}</th><td>{_esc(b)}</td></tr>' for a, b in rows)
        + "</table>"
    )


def _passes(report: dict[str, Any]) -> str:
    head = "<thead><tr>" + "".join(
        f'<th scope="col">{h}</th>'
        for h in ("#", "Pass", "Kind", "Modified", "Seconds", "Nodes", "Params", "Check", "Details")
    ) + "</tr></thead>"
    rows = []
    for i, p in enumerate(report["passes"], 1):
        rows.append(
            f"<tr><td>{i}</td><td><code>{_esc(p['pipeline'])}</code></td><td>{'exact' if p['exact'] else 'lossy'}</td>"
            f"<td>{'yes' if p['modified'] else 'no'}</td><td>{p['seconds']:.3f}</td>"
            f"<td>{p['nodes_before']} → {p['nodes_after']}</td><td>{p['params_before']:,} → {p['params_after']:,}</td>"
            f"<td>{_esc(p['numerical_check'])}</td>"
            f"<td class=\"details\">{'; '.join(f'{_esc(k)}: {_esc(v)}' for k, v in p.get('details', {}).items())}</td></tr>"
        )
    return (
        f'<div class="wide"><table><caption>Every pass, in the order it ran</caption>{head}<tbody>{"".join(rows)}</tbody>'
        "</table></div>"
    )


def _gate(report: dict[str, Any]) -> str:
    gate = report["gate"]
    status = '<span class="pass">passed</span>' if gate["passed"] else '<span class="fail">failed</span>'
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in gate.get("reasons", []))
    return f"<p>Gate: {status}</p>" + (f"<ul>{reasons}</ul>" if reasons else "")


def _shape_text(entries: list[dict[str, Any]]) -> str:
    """``[N,3,8,8]`` per tensor; initializers and unknown shapes included, comma separated."""
    texts = []
    for entry in entries:
        shape = entry.get("shape")
        if entry.get("name") is None:
            continue
        texts.append("?" if shape is None else "[" + ",".join("?" if d is None else str(d) for d in shape) + "]")
    return " ".join(texts)


def _before_after(before: Any, after: Any) -> str:
    if before is None or before == after:
        return _num(after)
    return f"{_num(before)} → {_num(after)}"


def _precision(weight: dict[str, Any]) -> str:
    fmt = weight.get("format")
    if fmt in (None, "activation"):
        return "— (activation × activation)"
    if fmt == "float":
        return f"float{weight.get('bits') or ''}"
    parts = [f"int{weight.get('bits')}", fmt, weight.get("granularity") or ""]
    if weight.get("symmetric") is False:
        parts.append("asymmetric")
    return " ".join(p for p in parts if p)


def _channels_text(channels: dict[str, list[Any]]) -> str:
    out = channels.get("out", [None, None])
    if out[1] is None:
        return "—"
    if out[0] is None or out[0] == out[1]:
        return f"{out[1]}"
    return f"{out[1]} of {out[0]} ({out[1] / out[0]:.0%})"


def _error_cells(error: dict[str, Any]) -> tuple[str, str]:
    if not error.get("measured"):
        return f'<span class="muted">{_esc(error.get("reason") or "—")}</span>', "—"
    if error.get("identical"):
        sqnr = "∞ (identical)"
    elif error.get("non_finite"):
        sqnr = "NaN/Inf"
    else:
        sqnr = _num(error.get("sqnr_db"), "{:.1f}")
    added = error.get("added_nsr")
    return _esc(sqnr), _esc("—" if added is None else f"{added:+.2e}")


def _worst_layers(rows: list[dict[str, Any]], count: int) -> set[int]:
    """Indices of the ``count`` layers that added the most noise."""
    scored = [(r["error"].get("added_nsr") or 0.0, i) for i, r in enumerate(rows) if r.get("error", {}).get("measured")]
    return {i for value, i in sorted(scored, reverse=True)[:count] if value > 0}


def _layers(report: dict[str, Any]) -> str:
    rows = report.get("layers") or []
    info = report.get("layer_error") or {}
    if not rows:
        reason = info.get("skipped") or "the model has no compute layers"
        return f'<h2>Layers</h2><p class="muted">No per-layer table: {_esc(reason)}.</p>'
    shown = list(enumerate(rows))
    note = ""
    if len(rows) > MAX_TABLE_ROWS:
        def badness(item: tuple[int, dict[str, Any]]) -> float:
            error = item[1]["error"]
            return error["sqnr_db"] if error.get("measured") and error.get("sqnr_db") is not None else math.inf

        keep = {i for i, _ in sorted(shown, key=badness)[:MAX_TABLE_ROWS]}
        shown = [(i, r) for i, r in shown if i in keep]
        note = f" The {MAX_TABLE_ROWS} layers with the lowest output SQNR of {len(rows)} are listed; the JSON report has all."
    worst = _worst_layers(rows, 3)
    has_harm = any("harm" in r for r in rows)
    headers = ["Layer", "Op", "Input shapes", "Output shape", "Params", "MACs / sample", "Weights",
               "Act. bits", "Zeros", "Out channels kept", "Output SQNR (dB)", "Added noise (NSR)"]
    if has_harm:
        headers.append("Harm alone")
    head = "<thead><tr>" + "".join(f'<th scope="col">{h}</th>' for h in headers) + "</tr></thead>"
    body = []
    for index, row in shown:
        weight = row.get("weight") or {}
        density = weight.get("density")
        zeros = "—" if density is None else f"{1.0 - density:.1%}"
        sqnr, added = _error_cells(row.get("error") or {})
        cells = [
            f'<th scope="row"><code>{_esc(row["name"])}</code></th>',
            f"<td>{_esc(row['op_type'])}</td>",
            f"<td>{_esc(_shape_text(row.get('inputs', [])[:1]))}</td>",
            f"<td>{_esc(_shape_text(row.get('outputs', [])[:1]))}</td>",
            f"<td>{_esc(_before_after(row.get('params_before'), row.get('params')))}</td>",
            f"<td>{_esc(_before_after(row.get('macs_before'), row.get('macs')))}</td>",
            f"<td>{_esc(_precision(weight))}</td>",
            f"<td>{_esc(_num(row.get('activation_bits')))}</td>",
            f"<td>{_esc(zeros)}</td>",
            f"<td>{_esc(_channels_text(row.get('channels') or {}))}</td>",
            f"<td>{sqnr}</td>",
            f"<td>{added}</td>",
        ]
        if has_harm:
            cells.append(f"<td>{_esc(_num(row.get('harm'), '{:.3g}'))}</td>")
        marked = ' class="worst"' if index in worst else ""
        body.append(f"<tr{marked}>{''.join(cells)}</tr>")
    measured = info.get("measured", 0)
    how = (
        f"Output error measured on {info.get('samples')} validation sample(s) for {measured} of {len(rows)} layers "
        f"in {_num(info.get('seconds'), '{:.2f}')} s: each layer's output in the optimized model against the same "
        "tensor in the float reference (the input after the pipeline's exact passes). Output SQNR accumulates the "
        "error of every layer before; added noise = this layer's noise-to-signal ratio minus the largest upstream one."
        if measured
        else f"Output error not measured: {info.get('skipped') or 'no comparable layer'}."
    )
    caption = (
        "Per-layer view of the optimized model: precision and sparsity as found in the graph "
        "(shaded: the three layers that added the most noise)"
    )
    table = f'<div class="wide"><table class="layers"><caption>{_esc(caption)}</caption>{head}<tbody>{"".join(body)}</tbody></table></div>'
    return "<h2>Layers</h2>" + f'<p class="muted">{_esc(how + note)}</p>' + table + _layer_plot(rows)


def _layer_plot(rows: list[dict[str, Any]]) -> str:
    try:
        plot = layer_error_svg(rows)
    except Exception as error:  # noqa: BLE001 - a plot must never cost the user the page
        logger.warning("per-layer error plot not drawn: %s", error)
        return ""
    if plot is None:
        if not have_matplotlib() and any(r.get("error", {}).get("measured") for r in rows):
            return '<p class="muted">Plots need matplotlib: pip install \'onnxpq[report]\'.</p>'
        return ""
    svg, caption = plot
    return f'<figure id="layer-error-plot">{svg}<figcaption>{_esc(caption)}</figcaption></figure>'


def _pareto(report: dict[str, Any]) -> str:
    document = report.get("pareto")
    if not document:
        return ""
    try:
        from onnxpq.report.pareto import pareto_svg

        svg = inline_svg(pareto_svg(document), "pareto", "Pareto frontier: quality against cost of every configuration")
    except Exception as error:  # noqa: BLE001 - a plot must never cost the user the page
        logger.warning("Pareto plot not drawn: %s", error)
        return f'<h2>Pareto frontier</h2><p class="muted">Not drawn: {_esc(type(error).__name__)}: {_esc(error)}.</p>'
    chosen = document.get("chosen") if isinstance(document, dict) else None
    caption = "Quality against cost of every evaluated configuration; frontier points joined"
    if chosen:
        caption += f"; chosen: {chosen}"
    return f'<h2>Pareto frontier</h2><figure id="pareto-plot">{svg}<figcaption>{_esc(caption)}.</figcaption></figure>'


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    target = report["target"]
    env = report["environment"]
    title = f"onnxpq report — {report['input']} on {target['name']}"
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        f"<p class=\"muted\">Target <b>{_esc(target['name'])}</b>: {_esc(target['description'])}. "
        f"Output: <code>{_esc(report['output'])}</code>. Data: {_esc(report['data']['source'])} "
        f"({report['data']['samples']} samples{', labelled' if report['data']['labels'] else ''}).</p>"
        f"<p>Pipeline: <code>{_esc(report['pipeline'])}</code></p>"
        "<h2>Summary</h2>" + _summary(report) + _gate(report) + _chart(report)
        + _layers(report) + _pareto(report)
        + "<h2>Fidelity of the optimized outputs</h2>" + _fidelity(report)
        + "<h2>Passes</h2>" + _passes(report)
        + f"<p class=\"muted\">onnxpq {_esc(env['onnxpq'])}, onnx {_esc(env['onnx'])}, onnx-ir {_esc(env['onnx_ir'])}, "
        f"onnxruntime {_esc(env['onnxruntime'])}, Python {_esc(env['python'])} on {_esc(env['platform'])}.</p>"
        "</body></html>\n"
    )
