"""The per-model loop that bench_quantize.py and bench_prune.py share.

Each script knows how to find, measure and render one model; this loop runs
them over ``--models``, writes BENCHMARKS.md after every model (a later failure
keeps the earlier tables), records a model whose files are missing as a skip
line (without replacing an earlier measured block), and keeps or removes the
work folder (``--keep``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def run_models(
    args: argparse.Namespace,
    *,
    known: Sequence[str],
    locate: Callable[[str], tuple[Any, str]],
    benchmark: Callable[[Any, argparse.Namespace, Path], Any],
    render: Callable[[Any, argparse.Namespace], str],
    write_section: Callable[[Path, dict[str, str]], None],
    has_block: Callable[[Path, str], bool],
    prefix: str,
) -> int:
    """Benchmark every model of ``args.models`` (default ``known``) and update ``args.benchmarks``; returns 0."""
    found, skipped = [], []
    for name in dict.fromkeys(args.models or list(known)):
        files, why = locate(name)
        if files is None:
            logger.warning("%s", why)
            skipped.append(why)
        else:
            found.append(files)
    if args.keep is not None:
        work = args.keep.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix=prefix))
    blocks: dict[str, str] = {}
    try:
        for files in found:
            logger.info("== %s (%s)", files.name, files.onnx)
            run = benchmark(files, args, work / files.name)
            blocks[files.name] = render(run, args)
            write_section(args.benchmarks, blocks)  # after every model: a later failure keeps the earlier tables
        for line in skipped:
            name = line.split(":", 1)[0]
            if name not in blocks and not has_block(args.benchmarks, name):
                blocks[name] = f"### {name}\n\n- {line}\n"
        if blocks:
            write_section(args.benchmarks, blocks)
            logger.info("updated %s", args.benchmarks)
        for name in known:
            if name in blocks:
                print(blocks[name])
        for line in skipped:
            print(f"- {line}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            logger.info("kept %s", work)
    return 0
