"""The machine and version lines every benchmark table records (shared by the tools/bench_*.py scripts)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["machine_lines"]


def _cpu_and_memory() -> tuple[str, str]:
    cpu, mem = "unknown", "unknown"
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        flags = next((line for line in lines if line.startswith("flags")), "").split()
        if "avx512_vnni" in flags:
            cpu += " (AVX-512 VNNI)"
        elif "avx_vnni" in flags:
            cpu += " (AVX-VNNI)"
        total = next((line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), "")
        if total:
            mem = f"{int(total.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return cpu, mem


def machine_lines() -> list[str]:
    """Two Markdown list lines: platform, cores, CPU (with its VNNI flag), memory; Python and library versions."""
    import numpy
    import onnx
    import onnx_ir
    import onnxruntime

    import onnxpq

    cpu, mem = _cpu_and_memory()
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- Machine: {platform.platform()}; nproc {nproc}; CPU {cpu}; memory {mem}",
        f"- Python {platform.python_version()}, onnx {onnx.__version__}, onnx-ir {onnx_ir.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}, onnxpq {onnxpq.__version__}",
    ]
