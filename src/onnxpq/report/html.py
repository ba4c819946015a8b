"""A self-contained HTML page of a report: summary, fidelity, gate, passes, a ratio chart.

No external assets, no JavaScript: inline CSS and an inline SVG bar chart of
optimized/baseline ratios, so the page opens anywhere (CI artifacts, mail).
"""

from __future__ import annotations

import html
from typing import Any

from onnxpq.report.summary import summary_rows

__all__ = ["render_html"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#1b1f24;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;width:100%}th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}.muted{color:#57606a}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}code{background:#f6f8fa;padding:.1rem .3rem;border-radius:4px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _num(value: float | int | None, fmt: str = "{:,}") -> str:
    return "—" if value is None else fmt.format(value)


def _summary(report: dict[str, Any]) -> str:
    rows = summary_rows(report)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        '<table id="summary"><thead><tr><th>Figure</th><th>Baseline</th><th>Optimized</th><th>Change</th></tr></thead>'
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
    return "<table>" + "".join(f"<tr><td>{_esc(a)}</td><td>{_esc(b)}</td></tr>" for a, b in rows) + "</table>"


def _passes(report: dict[str, Any]) -> str:
    head = (
        "<tr><th>#</th><th>Pass</th><th>Kind</th><th>Modified</th><th>Seconds</th><th>Nodes</th><th>Params</th>"
        "<th>Check</th><th>Details</th></tr>"
    )
    rows = []
    for i, p in enumerate(report["passes"], 1):
        rows.append(
            f"<tr><td>{i}</td><td><code>{_esc(p['pipeline'])}</code></td><td>{'exact' if p['exact'] else 'lossy'}</td>"
            f"<td>{'yes' if p['modified'] else 'no'}</td><td>{p['seconds']:.3f}</td>"
            f"<td>{p['nodes_before']} → {p['nodes_after']}</td><td>{p['params_before']:,} → {p['params_after']:,}</td>"
            f"<td>{_esc(p['numerical_check'])}</td>"
            f"<td>{'; '.join(f'{_esc(k)}: {_esc(v)}' for k, v in p.get('details', {}).items())}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _gate(report: dict[str, Any]) -> str:
    gate = report["gate"]
    status = '<span class="pass">passed</span>' if gate["passed"] else '<span class="fail">failed</span>'
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in gate.get("reasons", []))
    return f"<p>Gate: {status}</p>" + (f"<ul>{reasons}</ul>" if reasons else "")


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    target = report["target"]
    env = report["environment"]
    title = f"onnxpq report — {report['input']} on {target['name']}"
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>"
        f"<p class=\"muted\">Target <b>{_esc(target['name'])}</b>: {_esc(target['description'])}. "
        f"Output: <code>{_esc(report['output'])}</code>. Data: {_esc(report['data']['source'])} "
        f"({report['data']['samples']} samples{', labelled' if report['data']['labels'] else ''}).</p>"
        f"<p>Pipeline: <code>{_esc(report['pipeline'])}</code></p>"
        "<h2>Summary</h2>" + _summary(report) + _gate(report) + _chart(report)
        + "<h2>Fidelity of the optimized outputs</h2>" + _fidelity(report)
        + "<h2>Passes</h2>" + _passes(report)
        + f"<p class=\"muted\">onnxpq {_esc(env['onnxpq'])}, onnx {_esc(env['onnx'])}, onnx-ir {_esc(env['onnx_ir'])}, "
        f"onnxruntime {_esc(env['onnxruntime'])}, Python {_esc(env['python'])} on {_esc(env['platform'])}.</p>"
        "</body></html>\n"
    )
