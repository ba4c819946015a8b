"""This process's memory: resident-set figures for debug logs, and handing freed heap memory back to the system.

``memory_usage()`` reads ``/proc/self/status`` (Linux; ``None`` elsewhere):
``VmRSS`` (resident now), ``VmHWM`` (the peak so far, what ``/usr/bin/time -v``
reports as "Maximum resident set size"), ``RssAnon`` (heap and anonymous
maps: numpy arrays, onnxruntime buffers) and ``RssFile`` (pages of memory-mapped
files, e.g. external weights, while they are mapped). :func:`log_memory` writes
them at DEBUG at the stage boundaries of a workflow, so a peak can be placed
without a profiler (``onnxpq optimize -vv``).

``return_freed_memory()`` calls glibc's ``malloc_trim``: glibc raises its mmap
threshold after freeing a large block, so later arrays of a few MiB come from the
heap, and freed heap chunks stay resident until trimmed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from pathlib import Path

__all__ = ["memory_usage", "log_memory", "return_freed_memory"]

logger = logging.getLogger(__name__)

_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
_STATUS = Path("/proc/self/status")


def memory_usage() -> dict[str, int] | None:
    """``{"VmRSS", "VmHWM", "RssAnon", "RssFile"}`` of this process in bytes, or None where ``/proc`` is missing."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in _FIELDS:
            found[key] = int(value.split()[0]) * 1024  # kB
    return found or None


def log_memory(stage: str) -> None:
    """One DEBUG line with this process's resident memory (MiB) after ``stage``; nothing is read unless DEBUG is on."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    usage = memory_usage()
    if usage is None:
        return
    logger.debug("memory after %s: %s", stage, ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in usage.items()))


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def return_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``); a no-op elsewhere."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)
