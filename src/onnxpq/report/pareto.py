"""The Pareto plot and the self-contained HTML page of an ``explore`` run.

The plot (matplotlib, Agg, inlined as SVG) shows quality against cost for every
evaluated configuration: frontier points joined by a step line, dominated
points hollow and grey, the uniform baselines as labelled squares. The page
adds the baselines' verdicts (strict, and within the latency measurement's
tolerance), the per-layer decision table of the chosen and frontier
configurations, the sensitivities, the additivity check and the planner
cost's rank agreement with the whole model's. No external assets.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from typing import Any

__all__ = ["pareto_svg", "pareto_figure", "render_explore_html"]

_LABELS = {"latency_ms": "latency (ms per run)", "bops": "bit-operations / sample", "macs": "MACs / sample",
           "weight_bits": "weight memory (bits)"}


def pareto_figure(document: dict[str, Any], figures: Sequence[str] | None = None, title: str | None = None) -> Any:
    """A matplotlib Figure with one panel per cost figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = list(figures or [document["primary_cost"], "weight_bits"])
    figures = list(dict.fromkeys(figures))
    fig, axes = plt.subplots(1, len(figures), figsize=(5.2 * len(figures), 4.0), squeeze=False)
    measure = document["quality_measure"]
    for ax, figure in zip(axes[0], figures, strict=True):
        planned = [p for p in document["points"] if p["kind"] == "planned" and p["quality"] is not None and p["costs"][figure] is not None]
        on = sorted((p for p in planned if p["on_frontier"][figure]), key=lambda p: p["costs"][figure])
        off = [p for p in planned if not p["on_frontier"][figure]]
        ax.scatter([p["costs"][figure] for p in off], [p["quality"] for p in off], facecolors="none",
                   edgecolors="#8c959f", label="dominated", zorder=2)
        ax.step([p["costs"][figure] for p in on], [p["quality"] for p in on], where="post", color="#0969da", zorder=3)
        ax.scatter([p["costs"][figure] for p in on], [p["quality"] for p in on], color="#0969da", label="frontier", zorder=4)
        for p in document["points"]:
            if p["kind"] != "baseline" or p["quality"] is None or p["costs"][figure] is None:
                continue
            ax.scatter([p["costs"][figure]], [p["quality"]], marker="s", color="#cf222e", zorder=5)
            ax.annotate(p["id"][2:], (p["costs"][figure], p["quality"]), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color="#cf222e")
        chosen = document.get("chosen")
        for p in planned:
            if p["id"] == chosen:
                ax.scatter([p["costs"][figure]], [p["quality"]], marker="*", s=160, color="#1a7f37", label="chosen", zorder=6)
        estimated = figure == "latency_ms" and document.get("latency") == "estimated"
        label = _LABELS.get(figure, figure)
        if figure == "latency_ms":
            label = f"latency (ms per run of batch {document.get('latency_batch', 1)})"
        ax.set_xlabel(label + (" (estimated)" if estimated else ""))
        ax.set_ylabel(measure)
        costs = [p["costs"][figure] for p in document["points"] if p["costs"][figure]]
        if costs and min(costs) > 0 and max(costs) / min(costs) > 20:
            ax.set_xscale("log")  # costs spanning decades (bit widths x pruning)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def pareto_svg(document: dict[str, Any], figures: Sequence[str] | None = None) -> str:
    """The Pareto plot as inline SVG text."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(document, figures)
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.find("<svg"):]


def _esc(value: Any) -> str:
    return html.escape("—" if value is None else str(value))


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _points_table(document: dict[str, Any]) -> str:
    primary = document["primary_cost"]
    rows = []
    for p in document["points"]:
        if p["kind"] == "random":
            continue
        mark = "★ " if p["id"] == document.get("chosen") else ""
        flag = "frontier" if p["on_frontier"].get(primary) else ("baseline" if p["kind"] == "baseline" else "dominated")
        rows.append(
            f"<tr><td>{mark}{_esc(p['id'])}</td><td>{flag}</td><td>{_fmt(p['quality'])}</td><td>{_fmt(p['drop'])}</td>"
            + "".join(f"<td>{_fmt(p['costs'][k])}</td>" for k in ("latency_ms", "bops", "macs", "weight_bits"))
            + f"<td><code>{_esc(p['pipeline'])}</code></td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("id", "", document["quality_measure"], "drop", "latency ms", "BOPs", "MACs",
                                            "weight bits", "pipeline"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _decision_table(document: dict[str, Any]) -> str:
    primary = document["primary_cost"]
    shown = [p for p in document["points"] if p["kind"] == "planned" and (p["on_frontier"].get(primary) or p["id"] == document.get("chosen"))]
    shown.sort(key=lambda p: p["costs"][primary] or 0)
    if not shown:
        return ""
    head = "<th>layer</th><th>op</th><th>MACs</th>" + "".join(f"<th>{_esc(p['id'])}</th>" for p in shown)
    rows = []
    for layer in document["layers"]:
        cells = "".join(f"<td>{_esc(p['layers'].get(layer['name'], 'float'))}</td>" for p in shown)
        rows.append(f"<tr><td>{_esc(layer['name'])}</td><td>{_esc(layer['op_type'])}</td><td>{_fmt(layer['macs'])}</td>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cost_agreement(document: dict[str, Any]) -> str:
    agreement = document.get("planner", {}).get("cost_agreement") or {}
    if agreement.get("spearman") is None:
        return ""
    return (f"<h2>Planner cost against {_esc(document['primary_cost'])}</h2><p>{_esc(agreement.get('points'))} planned "
            f"configurations; Spearman rank correlation of the planner's predicted cost (Σ per layer, "
            f"{_esc(document['planner']['cost_model'])}) with the whole model's = {_fmt(agreement.get('spearman'))}</p>")


def _baselines_table(document: dict[str, Any]) -> str:
    """Every baseline against the frontier of the primary cost: the strict verdict and, beside it, the one within τ."""
    primary = document["primary_cost"]
    comparison = document.get("baseline_comparison", {}).get(primary, {})
    if not comparison:
        return ""
    points = {p["id"]: p for p in document["points"]}
    yes_no = {True: "yes", False: "no", None: "—"}
    rows = []
    for key, c in comparison.items():
        b = points.get(key, {})
        rows.append(
            f"<tr><td>{_esc(key[2:])}</td><td>{_fmt(b.get('quality'))}</td><td>{_fmt((b.get('costs') or {}).get(primary))}</td>"
            f"<td>{_fmt(c.get('best_quality_at_cost'))}</td><td>{_fmt(c.get('least_cost_at_quality'))}</td>"
            f"<td>{yes_no[c.get('dominates')]}</td><td>{yes_no[c.get('dominates_within_tolerance')]}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("baseline", document["quality_measure"], primary, "frontier best at ≤ cost",
                                            "frontier least cost at ≥ quality", "dominated (strict)", "within τ"))
    noise = document.get("latency_noise") or {}
    tolerance = max((c.get("tolerance") or 0.0 for c in comparison.values()), default=0.0)
    note = (f"<p class='muted'>τ = {tolerance:.1%}: {_esc(noise.get('method'))}; a frontier point as good and at most τ "
            "dearer is a tie the measurement cannot resolve. The strict verdict stands beside it.</p>") if tolerance else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}"


def render_explore_html(document: dict[str, Any]) -> str:
    """The explore report as one self-contained HTML page."""
    from onnxpq.report.html import _CSS

    gate = document["gate"]
    additivity = document.get("additivity", {})
    status = '<span class="pass">met</span>' if gate["passed"] else f'<span class="fail">not met: {_esc(gate["reason"])}</span>'
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>onnxpq explore</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>onnxpq explore: {_esc(document['model'])}</h1>",
        f"<p class='muted'>target {_esc(document['target']['name'])}; primary cost {_esc(document['primary_cost'])} "
        f"(latency {_esc(document['latency'])}); planner cost model {_esc(document['planner']['cost_model'])}; "
        f"quality: {_esc(document['quality_measure'])}</p>",
        f"<p>Chosen: <b>{_esc(document.get('chosen'))}</b> — gate {status}</p>",
        "<h2>Pareto frontier</h2>",
        pareto_svg(document),
        "<h2>Baselines</h2>",
        _baselines_table(document),
        "<h2>Configurations</h2>",
        _points_table(document),
        "<h2>Per-layer decisions (frontier and chosen)</h2>",
        _decision_table(document),
        "<h2>Additivity of per-layer noise</h2>",
        f"<p>{_esc(additivity.get('configurations'))} configurations; Pearson r of log10 (predicted Σ noise, measured noise) "
        f"= {_fmt(additivity.get('pearson_log10'))}; Spearman = {_fmt(additivity.get('spearman'))}; measured/predicted "
        f"median {_fmt(additivity.get('ratio_median'))}</p>",
        _cost_agreement(document),
        "</body></html>",
    ]
    return "\n".join(parts)
