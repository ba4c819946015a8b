"""Where candidate evaluations run: in this process, a local process pool, or Ray tasks on a cluster.

An executor maps a picklable function over picklable, idempotent tasks (small
dataclasses such as :class:`onnxpq.search.evaluation.Evaluation`: paths and
text, no live sessions) and returns the results in task order. Progress is
reported through a callback after every finished task, in completion order, and each result is handed to ``on_result(index, result)`` as
soon as it arrives (the caller stores it: an interrupted run keeps it).

* :class:`InlineExecutor` — one by one in this process (``workers=1``; tests, debugging);
* :class:`LocalExecutor` — ``concurrent.futures.ProcessPoolExecutor`` with the
  ``spawn`` start method (a forked child would inherit onnxruntime's thread
  pools from the parent, which is not fork-safe);
* :class:`RayExecutor` — each task a ``ray.remote`` task (one CPU each) on an
  existing cluster (``address``) or a local one started for the run; ``ray`` is
  the optional ``[ray]`` extra, imported only here.

Own code: a thin layer over the standard library and Ray's task API.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Protocol, TypeVar

from onnxpq.errors import OnnxpqError

__all__ = ["Executor", "InlineExecutor", "LocalExecutor", "RayExecutor", "make_executor", "EXECUTORS"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Progress = Callable[[int, int], None]
OnResult = Callable[[int, Any], None]

#: Executor names the CLI accepts.
EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """Runs ``fn`` over ``tasks``; results in task order."""

    name: str

    def map(
        self, fn: Callable[[T], R], tasks: Sequence[T], progress: Progress | None = None, on_result: OnResult | None = None
    ) -> list[R]: ...


class InlineExecutor:
    """Every task in this process, in order."""

    name = "inline"

    def map(
        self, fn: Callable[[T], R], tasks: Sequence[T], progress: Progress | None = None, on_result: OnResult | None = None
    ) -> list[R]:
        results = []
        for index, task in enumerate(tasks):
            results.append(fn(task))
            if on_result is not None:
                on_result(index, results[-1])
            if progress is not None:
                progress(index + 1, len(tasks))
        return results


class LocalExecutor:
    """A pool of ``workers`` processes on this machine (spawned, not forked)."""

    name = "local"

    def __init__(self, workers: int = 2) -> None:
        if workers < 1:
            raise OnnxpqError(f"--workers must be at least 1, got {workers}")
        self.workers = workers

    def map(
        self, fn: Callable[[T], R], tasks: Sequence[T], progress: Progress | None = None, on_result: OnResult | None = None
    ) -> list[R]:
        if not tasks:
            return []
        if self.workers == 1 or len(tasks) == 1:
            return InlineExecutor().map(fn, tasks, progress, on_result)
        results: list[Any] = [None] * len(tasks)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=context) as pool:
            pending = {pool.submit(fn, task): index for index, task in enumerate(tasks)}
            done_count = 0
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    results[index] = future.result()
                    if on_result is not None:
                        on_result(index, results[index])
                    done_count += 1
                    if progress is not None:
                        progress(done_count, len(tasks))
        return results


class RayExecutor:
    """Ray tasks on the cluster at ``address`` (``None``: the one this process is connected to, or a new local one)."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise OnnxpqError("--executor ray needs the ray package: pip install 'onnxpq[ray]'") from exc
        self.address = address
        self.num_cpus = num_cpus

    def _connect(self) -> Any:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
            if self.address is not None:
                kwargs["address"] = self.address
            elif self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise OnnxpqError(f"cannot connect to the Ray cluster at {self.address or 'a new local one'}: {exc}") from exc
        return ray

    def map(
        self, fn: Callable[[T], R], tasks: Sequence[T], progress: Progress | None = None, on_result: OnResult | None = None
    ) -> list[R]:
        if not tasks:
            return []
        ray = self._connect()
        remote = ray.remote(num_cpus=1, max_retries=2)(fn)
        refs = [remote.remote(task) for task in tasks]
        index_of = {ref: index for index, ref in enumerate(refs)}
        results: list[Any] = [None] * len(tasks)
        waiting = list(refs)
        done_count = 0
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            for ref in done:
                results[index_of[ref]] = ray.get(ref)
                if on_result is not None:
                    on_result(index_of[ref], results[index_of[ref]])
                done_count += 1
                if progress is not None:
                    progress(done_count, len(tasks))
        return results


def make_executor(name: str = "local", *, workers: int = 1, address: str | None = None) -> Executor:
    """The executor called ``name`` (``local`` or ``ray``)."""
    if name == "local":
        return LocalExecutor(workers) if workers > 1 else InlineExecutor()
    if name == "ray":
        return RayExecutor(address, num_cpus=workers if address is None and workers > 1 else None)
    raise OnnxpqError(f"unknown executor '{name}'; valid: {', '.join(EXECUTORS)}")
