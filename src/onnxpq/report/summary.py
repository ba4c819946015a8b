"""The before/after summary rows shared by the terminal table and the HTML page."""

from __future__ import annotations

from typing import Any

__all__ = ["summary_rows", "format_table", "format_bytes"]


def format_bytes(n: float | None) -> str:
    """Human-readable size (B, KiB, MiB, GiB)."""
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _num(value: float | int | None, fmt: str = "{:,}") -> str:
    return "—" if value is None else fmt.format(value)


def _ratio(new: float | None, old: float | None) -> str:
    return "—" if new is None or not old else f"{new / old:.3f}x"


def _latency(figures: dict[str, Any], key: str) -> str:
    lat = figures["latency_ms"]
    text = f"{lat[key]:.4g} ms"
    return text + " (est.)" if lat["estimated"] else text


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, baseline, optimized, change) for accuracy, latency, size, MACs and bit-operations."""
    b, o = report["baseline"], report["optimized"]
    if b["accuracy"] is None or o["accuracy"] is None:
        accuracy_change = "—"
    else:
        accuracy_change = f"{(o['accuracy'] - b['accuracy']) * 100:+.2f} pt"
    return [
        ("Accuracy", _num(b["accuracy"], "{:.2%}"), _num(o["accuracy"], "{:.2%}"), accuracy_change),
        ("Latency p50", _latency(b, "p50"), _latency(o, "p50"), _ratio(o["latency_ms"]["p50"], b["latency_ms"]["p50"])),
        ("Latency p90", _latency(b, "p90"), _latency(o, "p90"), _ratio(o["latency_ms"]["p90"], b["latency_ms"]["p90"])),
        ("Size", format_bytes(b["size_bytes"]), format_bytes(o["size_bytes"]), _ratio(o["size_bytes"], b["size_bytes"])),
        ("MACs / sample", _num(b["macs"]), _num(o["macs"]), _ratio(o["macs"], b["macs"])),
        ("Bit-ops / sample", _num(b["bops"]), _num(o["bops"]), _ratio(o["bops"], b["bops"])),
    ]


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A plain-text table with aligned columns (first column left, others right)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells)

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
