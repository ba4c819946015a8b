"""Instruments the pass manager runs around every pass.

In the manner of LLVM's ``-verify-each`` and MLIR's pass instrumentation:

* :class:`StructureCheck` — the cheap structural verifier after every pass;
* :class:`NumericalCheck` — for passes declared exact, the model before and
  after the pass run on the same sample inputs in onnxruntime; every output
  must satisfy ``|after - before| <= atol + rtol * max|before|``;
* :class:`ProgressDisplay` — one status line per pass on a terminal (the same
  rules as :mod:`onnxpq.core.progress`).

Timing and node/parameter/size deltas are recorded by the manager itself
(:class:`PassRecord`), since every report needs them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Protocol

import numpy as np
import onnx_ir as ir

from onnxpq.analysis.model_inputs import synthesize_inputs
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.progress import progress_allowed
from onnxpq.core.session import IN_MEMORY_LIMIT_BYTES, has_external_data, make_session, run_in_batches
from onnxpq.core.verify import StructureError, verify_structure

__all__ = [
    "PassRecord",
    "Instrument",
    "InstrumentFailure",
    "StructureCheck",
    "NumericalCheck",
    "ProgressDisplay",
    "model_stats",
]

logger = logging.getLogger(__name__)


@dataclass
class PassRecord:
    """What one pass did, as the report shows it."""

    name: str
    pipeline: str
    exact: bool
    seconds: float = 0.0
    modified: bool = False
    nodes_before: int = 0
    nodes_after: int = 0
    params_before: int = 0
    params_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    numerical_check: str = "not run"
    max_abs_error: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_stats(model: ir.Model) -> tuple[int, int, int]:
    """(nodes, parameters, tensor bytes) of the main graph and its subgraphs; reads no tensor data."""
    nodes = params = size = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        nodes += len(graph)
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None:
                params += tensor.size
                size += tensor.nbytes
    return nodes, params, size


class InstrumentFailure(Exception):
    """Raised by an instrument to reject a pass's result; the manager rolls the pass back."""


class Instrument(Protocol):
    """Hooks around every pass. ``after_pass`` raises InstrumentFailure to reject the result."""

    def before_pass(self, pass_: OnnxpqPass, model: ir.Model, record: PassRecord) -> None: ...

    def after_pass(self, pass_: OnnxpqPass, model: ir.Model, record: PassRecord) -> None: ...


class StructureCheck:
    """Run the structural verifier after every pass that modified the model."""

    def before_pass(self, pass_: OnnxpqPass, model: ir.Model, record: PassRecord) -> None:
        return None

    def after_pass(self, pass_: OnnxpqPass, model: ir.Model, record: PassRecord) -> None:
        if not record.modified:
            return
        try:
            verify_structure(model)
        except StructureError as exc:
            raise InstrumentFailure(f"left a malformed graph: {exc}") from exc


class NumericalCheck:
    """Check that exact passes keep the outputs, in onnxruntime.

    Reference outputs are those of the model just before the pass; they are
    computed lazily and reused while consecutive exact passes hold.
    """

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray] | None = None,
        *,
        samples: int = 4,
        rtol: float = 1e-4,
        atol: float = 1e-5,
    ) -> None:
        self._inputs = dict(inputs) if inputs is not None else None
        self._samples = samples
        self.rtol = rtol
        self.atol = atol
        self._reference: list[np.ndarray] | None = None
        self._skip_reason: str | None = None

    def _run(self, model: ir.Model) -> list[np.ndarray]:
        if self._inputs is None:
            self._inputs = synthesize_inputs(model, self._samples)
        session = make_session(model)
        return run_in_batches(session, self._inputs)

    def _unsupported(self, model: ir.Model) -> str | None:
        if has_external_data(model):
            return "the model has external data (too large for an in-memory check)"
        if model_stats(model)[2] > IN_MEMORY_LIMIT_BYTES:
            return f"the model is over {IN_MEMORY_LIMIT_BYTES >> 20} MiB"
        return None

    def before_pass(self, pass_: OnnxpqPass, model: ir.Model, record: PassRecord) -> None:
        if not pass_.exact:
            self._reference = None
            return
        self._skip_reason = self._unsupported(model)
        if self._skip_reason is None and self._reference is None:
            try:
                self._reference = self._run(model)
            except Exception as exc:  # noqa: BLE001 - the model before the pass may not run here
                self._skip_reason = f"the model does not run in onnxruntime before the pass ({type(exc).__name__})"
                logger.debug("numerical check reference failed: %s", exc)

    def after_pass(self, pass_: OnnxpqPass, model: ir.Model, record: PassRecord) -> None:
        if not pass_.exact:
            record.numerical_check = "not applicable (lossy pass)"
            return
        if self._skip_reason is not None or self._reference is None:
            record.numerical_check = f"skipped: {self._skip_reason}"
            logger.info("%s: numerical check skipped: %s", pass_.name, self._skip_reason)
            return
        if not record.modified:
            record.numerical_check = "passed (unmodified)"
            record.max_abs_error = 0.0
            return
        try:
            outputs = self._run(model)
        except Exception as exc:  # noqa: BLE001 - any runtime failure rejects the pass
            self._reference = None
            raise InstrumentFailure(
                f"the model no longer runs in onnxruntime: {str(exc).strip().splitlines()[0]}"
            ) from exc
        worst = 0.0
        for index, (before, after) in enumerate(zip(self._reference, outputs, strict=True)):
            if before.shape != after.shape or before.dtype != after.dtype:
                self._reference = None
                raise InstrumentFailure(
                    f"output {index} changed from {before.dtype}{list(before.shape)} to {after.dtype}{list(after.shape)}"
                )
            if before.size == 0 or not np.issubdtype(before.dtype, np.number):
                if not np.array_equal(before, after):
                    self._reference = None
                    raise InstrumentFailure(f"output {index} changed")
                continue
            b = before.astype(np.float64)
            a = after.astype(np.float64)
            finite = np.isfinite(b)
            if not np.array_equal(finite, np.isfinite(a)):
                self._reference = None
                raise InstrumentFailure(f"output {index}: finite/non-finite pattern changed")
            error = float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))
            rtol = max(self.rtol, 1e-2) if before.dtype in (np.float16,) or before.dtype.itemsize < 4 else self.rtol
            bound = self.atol + rtol * float(np.max(np.abs(b[finite]), initial=0.0))
            worst = max(worst, error)
            if error > bound:
                self._reference = None
                raise InstrumentFailure(
                    f"an exact pass changed output {index} by {error:.3g} (tolerance {bound:.3g})"
                )
        record.max_abs_error = worst
        record.numerical_check = f"passed (max |error| {worst:.3g})"
        self._reference = outputs


class ProgressDisplay:
    """A status line per pass on a terminal; silent when not a tty, in CI, or with the progress switch off.

    See :mod:`onnxpq.core.progress` for the switch (``-q``) and the bars of long steps.
    """

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.index = 0
        self.enabled = progress_allowed(self.stream)

    def before_pass(self, pass_: OnnxpqPass, model: ir.Model, record: PassRecord) -> None:
        self.index += 1
        if self.enabled:
            self.stream.write(f"\r\x1b[2K[{self.index}/{self.total}] {pass_.name} ...")
            self.stream.flush()

    def after_pass(self, pass_: OnnxpqPass, model: ir.Model, record: PassRecord) -> None:
        if self.enabled:
            change = "modified" if record.modified else "no change"
            self.stream.write(f"\r\x1b[2K[{self.index}/{self.total}] {pass_.name}: {change} ({record.seconds:.2f} s)")
            if self.index == self.total:
                self.stream.write("\n")
            self.stream.flush()
