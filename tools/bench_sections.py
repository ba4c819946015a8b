"""How the tools/bench_*.py scripts write BENCHMARKS.md: each owns a section between its markers.

A script replaces only its own section (everything else in the file is kept)
and writes the file atomically (:func:`onnxpq.io.write_text_atomic`: a temporary
file in the same folder, fsync, rename), so an interrupted benchmark never
leaves a half-written file.
Scripts with one block per model keep the blocks of models they did not run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from onnxpq.io import write_text_atomic

__all__ = ["merge_model_blocks", "read_section", "replace_section"]


def read_section(benchmarks: Path, start_marker: str, end_marker: str) -> str:
    """The text between the markers ('' when the file or the section does not exist)."""
    if not benchmarks.is_file():
        return ""
    text = benchmarks.read_text(encoding="utf-8")
    start, end = text.find(start_marker), text.find(end_marker)
    return text[start + len(start_marker) : end] if start != -1 and end > start else ""


def replace_section(benchmarks: Path, start_marker: str, end_marker: str, inner: str) -> None:
    """Write ``start_marker + newline + inner + end_marker`` in place of the old section (appended when absent)."""
    block = f"{start_marker}\n{inner}{end_marker}"
    text = benchmarks.read_text(encoding="utf-8") if benchmarks.exists() else "# Benchmarks\n"
    start, end = text.find(start_marker), text.find(end_marker)
    if start != -1 and end > start:
        text = text[:start] + block + text[end + len(end_marker) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    write_text_atomic(benchmarks, text)


def merge_model_blocks(
    old_section: str,
    intro: str,
    names: Iterable[str],
    markers: Callable[[str], tuple[str, str]],
    blocks: Mapping[str, str],
) -> str:
    """The inner text of a per-model section: ``intro``, then each model's block between its own markers.

    ``blocks`` (this run's) replace the old blocks of the same model; the old
    blocks of other models are kept; models are in the order of ``names``.
    """
    names = list(names)
    kept: dict[str, str] = {}
    for name in names:
        begin, finish = markers(name)
        i, j = old_section.find(begin), old_section.find(finish)
        if i != -1 and j > i:
            kept[name] = old_section[i + len(begin) : j].strip("\n") + "\n"
    kept.update(blocks)
    body = [intro]
    for name in names:
        if name in kept:
            begin, finish = markers(name)
            body.append(f"{begin}\n{kept[name]}{finish}\n")
    return "\n".join(body)
