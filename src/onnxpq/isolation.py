"""Parse and first-run an untrusted model in a child process with memory and time limits.

A crafted model can ask onnxruntime for terabytes (``ConstantOfShape`` of a
huge shape), run a ``Loop`` for ever, or hit a crash in a parser. Loaded
in-process, that takes the caller down (the OOM killer, a hang, a segfault).
:func:`check_model_isolated` does the risky first steps in a fresh
``python -m onnxpq.isolation`` process instead:

1. the safe load of :func:`onnxpq.io.load_model` (protobuf parse, external-data
   rules, structure, onnx checker);
2. an onnxruntime session and one run on one synthesised sample (or, with
   ``run=False``, nothing more).

The child runs under ``RLIMIT_AS`` (address space, so memory-mapped weights
count too) and a wall-clock timeout, plus ``RLIMIT_CPU`` as a backstop, in
its own process group. Whatever goes wrong there comes back as one
:class:`~onnxpq.errors.IsolationError` (exit code 2 in the CLI) saying which
limit was hit; an ordinary refusal (a :class:`~onnxpq.errors.ModelLoadError`
in the child) is re-raised here with the same class and message.

Only what the model does at load and first run is covered: a model that
passes is then loaded again in the caller, where later runs (more samples,
calibration) are not limited. POSIX only (``resource``).

Example::

    from onnxpq.isolation import check_model_isolated
    check_model_isolated("untrusted.onnx", memory_mib=2048, timeout_s=60)  # raises IsolationError
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from onnxpq import errors
from onnxpq.errors import IsolationError, ModelLoadError, OnnxpqError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "IsolationResult",
    "check_model_isolated",
    "default_memory_mib",
]

logger = logging.getLogger(__name__)

#: Wall-clock seconds the child may take to load and first-run a model.
DEFAULT_TIMEOUT_S = 300.0
#: Address space for the interpreter, onnx and onnxruntime themselves (about 0.4 GiB measured), with room.
BASE_MEMORY_MIB = 2048
#: Exit codes of the child.
_OK, _REFUSED, _OUT_OF_MEMORY, _FAILED = 0, 2, 3, 4
#: onnxruntime's words for an allocation that failed under the limit.
_ALLOCATION_WORDS = ("Failed to allocate memory", "bad_alloc", "std::bad_alloc", "out of memory")


@dataclass(frozen=True)
class IsolationResult:
    """What the child did: loaded (and ran) the model within the limits."""

    path: Path
    memory_mib: int
    timeout_s: float
    ran: bool  # False when asked not to, or when synthesised inputs did not fit the model
    seconds: float
    peak_rss_mib: float


def default_memory_mib(path: str | os.PathLike[str]) -> int:
    """The default address-space limit for ``path``: 2 GiB plus four times the model's size on disk.

    Weights are memory-mapped (they count against ``RLIMIT_AS``) and
    onnxruntime holds its own copy plus working buffers; a model that needs
    more than that at its first run is suspicious. Unreadable sizes count as 0.
    """
    from onnxpq.io import model_size_bytes

    try:
        size = model_size_bytes(path)
    except Exception:  # noqa: BLE001 - a broken model is judged in the child, not here
        try:
            size = Path(path).stat().st_size
        except OSError:
            size = 0
    return BASE_MEMORY_MIB + 4 * (size >> 20)


def _limits(memory_bytes: int, cpu_seconds: int) -> None:
    """Set the child's own limits, first thing (before any model byte is read)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def check_model_isolated(
    path: str | os.PathLike[str],
    *,
    memory_mib: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    run: bool = True,
) -> IsolationResult:
    """Load (and first-run) ``path`` in a limited child process; raise if it is refused or breaks a limit.

    Args:
        path: the model to check.
        memory_mib: address-space limit of the child in MiB; None: :func:`default_memory_mib`.
        timeout_s: wall-clock limit in seconds (the child's process group is killed after it).
        run: also create an onnxruntime session and run it once on one synthesised sample.

    Returns:
        an :class:`IsolationResult` when the model loaded (and ran) within the limits.

    Raises:
        IsolationError: the child hit the memory or time limit, or died of a signal.
        ModelLoadError: (or its subclasses) the model was refused, as :func:`onnxpq.io.load_model` would.
        OnnxpqError: a limit is not positive.
    """
    path = Path(path)
    memory = default_memory_mib(path) if memory_mib is None else memory_mib
    if memory < 1 or timeout_s <= 0:
        raise OnnxpqError(f"isolation limits must be positive (memory {memory} MiB, timeout {timeout_s} s)")
    command = [
        sys.executable, "-m", "onnxpq.isolation", str(path), "run" if run else "load",
        str(memory << 20), str(int(timeout_s) + 1),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    logger.info("loading %s in an isolated process (memory %d MiB, timeout %g s)", path, memory, timeout_s)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise IsolationError(
            f"{path}: loading and running the model once took longer than {timeout_s:g} s "
            "(--isolate-timeout); refusing it",
            limit="time",
        ) from None
    except BaseException:
        _kill_group(process)
        raise
    return _judge(path, process.returncode, stdout, stderr, memory, timeout_s, run)


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.communicate()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _judge(path: Path, code: int, stdout: str, stderr: str, memory: int, timeout_s: float, run: bool) -> IsolationResult:
    last = _last_line(stderr)
    if code == _OK:
        facts = json.loads(_last_line(stdout) or "{}")
        return IsolationResult(
            path, memory, timeout_s, bool(facts.get("ran")), facts.get("seconds", 0.0), facts.get("peak_rss_mib", 0.0)
        )
    if code == _REFUSED:
        kind, _, message = last.partition("\t")
        error_class = getattr(errors, kind, None)
        if not (isinstance(error_class, type) and issubclass(error_class, OnnxpqError)):
            error_class, message = ModelLoadError, last
        raise error_class(message)
    if code == _OUT_OF_MEMORY:
        raise IsolationError(
            f"{path}: loading and running the model once needed more than {memory} MiB of memory "
            f"(--isolate-memory); refusing it ({last.split(' Status Message')[0][:160]})",
            limit="memory",
        )
    if code < 0:
        name = _signal_name(-code)
        if -code == signal.SIGXCPU:
            raise IsolationError(
                f"{path}: loading and running the model once used more than {int(timeout_s) + 1} s of CPU "
                "(--isolate-timeout); refusing it",
                limit="time",
            )
        hint = " (likely an allocation failing under --isolate-memory)" if -code in (signal.SIGABRT, signal.SIGSEGV) else ""
        raise IsolationError(f"{path}: the isolated loader died of {name}{hint}; refusing the model", limit="signal")
    raise IsolationError(f"{path}: the isolated loader failed (exit {code}): {last[:300]}", limit=None)


def _child(path: str, mode: str, memory_bytes: int, cpu_seconds: int) -> int:
    """The child's side: limit itself, load, maybe run once; report on stdout (facts) / stderr (one line)."""
    import resource
    import time

    logging.basicConfig(level=logging.ERROR)
    start = time.perf_counter()
    ran = False
    try:
        from onnxpq.analysis.model_inputs import synthesize_inputs
        from onnxpq.core.session import make_session, run_in_batches
        from onnxpq.io import load_model

        _limits(memory_bytes, cpu_seconds)
        model = load_model(path)
        if mode == "run":
            try:
                inputs = synthesize_inputs(model, 1)
            except ValueError:
                inputs = None  # inputs onnxpq cannot synthesise: load and session only
            del model
            try:
                session = make_session(path)
            except Exception as exc:  # noqa: BLE001 - same refusal as in-process
                message = " ".join(str(exc).split())
                raise ModelLoadError(f"{path}: onnxruntime cannot load the model: {message[:300]}") from exc
            if inputs is not None:
                try:
                    run_in_batches(session, inputs)
                    ran = True
                except MemoryError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    message = " ".join(str(exc).split())
                    if any(word in message for word in _ALLOCATION_WORDS):
                        raise
                    # synthesised inputs may not fit (a dim only real data resolves): not a reason to refuse here
                    logging.getLogger(__name__).info("first run on synthesised inputs failed: %s", message)
    except MemoryError:
        sys.stderr.write("MemoryError\n")
        return _OUT_OF_MEMORY
    except OnnxpqError as exc:
        message = " ".join(str(exc).split())
        if any(word in message for word in _ALLOCATION_WORDS):
            sys.stderr.write(f"{message}\n")
            return _OUT_OF_MEMORY
        sys.stderr.write(f"{type(exc).__name__}\t{message}\n")
        return _REFUSED
    except Exception as exc:  # noqa: BLE001 - onnxruntime and onnx raise many kinds
        message = " ".join(str(exc).split())
        if any(word in message for word in _ALLOCATION_WORDS):
            sys.stderr.write(f"{message}\n")
            return _OUT_OF_MEMORY
        sys.stderr.write(f"ModelLoadError\t{path}: the model fails in onnxruntime: {type(exc).__name__}: {message[:300]}\n")
        return _REFUSED
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mib": peak, "ran": ran}) + "\n")
    return _OK


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[2] not in ("load", "run"):
        sys.stderr.write("usage: python -m onnxpq.isolation MODEL {load,run} MEMORY_BYTES CPU_SECONDS\n")
        sys.exit(64)
    sys.exit(_child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
