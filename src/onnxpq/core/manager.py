"""The verified pass manager.

Built on ``onnx_ir.passes.PassManager``; it adds, around every pass:
instruments (structure check, numerical check of exact passes, progress),
a :class:`PassRecord` with timing and node/parameter/size deltas, analysis
invalidation, and rollback. It is *functional*: the model given to it is
never modified; it works on a clone, and before each pass it keeps a clone
(O(nodes); tensors are shared, and passes never write into a tensor, they
replace it) so that a failing pass can be undone.

On failure it raises :class:`PassFailed` naming the pass, with the model as
it was before that pass, and, when ``dump_on_failure`` is set, writes a
reproducer there: ``model.onnx`` (the input of the failing pass),
``pipeline.txt`` (that pass's text) and ``error.txt``.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxpq.core.context import PassContext
from onnxpq.core.instruments import (
    Instrument,
    InstrumentFailure,
    NumericalCheck,
    PassRecord,
    ProgressDisplay,
    StructureCheck,
    model_stats,
)
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.pipeline_text import format_pass, format_pipeline
from onnxpq.errors import OnnxpqError, PassFailed

__all__ = ["PassManager"]

logger = logging.getLogger(__name__)


class PassManager(ir.passes.PassManager):
    """Run onnxpq passes with verification, records and rollback.

    Args:
        passes: the passes, in order.
        verify_each: run the structural verifier after every modifying pass.
        check_numerics: check exact passes in onnxruntime.
        check_inputs: sample inputs for the numerical check (synthesised if None).
        progress: show a status line on a terminal.
        dump_on_failure: folder for a reproducer when a pass fails.
        instruments: extra instruments, run after the built-in ones.
    """

    def __init__(
        self,
        passes: Sequence[OnnxpqPass],
        *,
        verify_each: bool = True,
        check_numerics: bool = True,
        check_inputs: Mapping[str, np.ndarray] | None = None,
        progress: bool = True,
        dump_on_failure: str | Path | None = None,
        instruments: Sequence[Instrument] = (),
    ) -> None:
        super().__init__(list(passes), steps=1, early_stop=False)
        self.verify_each = verify_each
        self.check_numerics = check_numerics
        self.check_inputs = check_inputs
        self.progress = progress
        self.dump_on_failure = Path(dump_on_failure) if dump_on_failure is not None else None
        self.extra_instruments = list(instruments)
        self.records: list[PassRecord] = []

    @property
    def in_place(self) -> bool:
        return False

    @property
    def changes_input(self) -> bool:
        return False

    @property
    def pipeline_text(self) -> str:
        return format_pipeline(self.passes)

    def _instruments(self) -> list[Instrument]:
        instruments: list[Instrument] = []
        if self.verify_each:
            instruments.append(StructureCheck())
        if self.check_numerics:
            instruments.append(NumericalCheck(self.check_inputs))
        if self.progress:
            instruments.append(ProgressDisplay(len(self.passes)))
        return instruments + self.extra_instruments

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        active = PassContext.active()
        if active is None:
            with PassContext():
                return self.call(model)
        ctx = active
        instruments = self._instruments()
        self.records = []
        work = model.clone()
        overall = False
        for index, pass_ in enumerate(self.passes):
            nodes, params, size = model_stats(work)
            record = PassRecord(
                name=pass_.name,
                pipeline=format_pass(pass_, full=True),
                exact=pass_.exact,
                nodes_before=nodes,
                params_before=params,
                bytes_before=size,
            )
            snapshot = work.clone()
            ctx.details = {}
            start = time.perf_counter()
            try:
                for instrument in instruments:
                    instrument.before_pass(pass_, work, record)
                result = pass_(work)
                record.seconds = time.perf_counter() - start
                record.modified = bool(result.modified)
                record.nodes_after, record.params_after, record.bytes_after = model_stats(work)
                for instrument in instruments:
                    instrument.after_pass(pass_, work, record)
            except Exception as exc:  # noqa: BLE001 - every failure is rolled back and named
                record.seconds = time.perf_counter() - start
                record.details = ctx.details
                self.records.append(record)
                raise self._failure(pass_, index, snapshot, exc) from exc
            record.details = ctx.details
            if record.modified:
                overall = True
                ctx.analyses.invalidate(pass_.preserves)
            self.records.append(record)
            logger.info(
                "%s: %s in %.3f s, nodes %d -> %d, params %d -> %d%s",
                pass_.name,
                "modified" if record.modified else "no change",
                record.seconds,
                record.nodes_before,
                record.nodes_after,
                record.params_before,
                record.params_after,
                f", check {record.numerical_check}" if pass_.exact else "",
            )
        return ir.passes.PassResult(work, overall)

    def _failure(self, pass_: OnnxpqPass, index: int, snapshot: ir.Model, exc: BaseException) -> PassFailed:
        if isinstance(exc, InstrumentFailure):
            reason = str(exc)
        elif isinstance(exc, OnnxpqError):
            reason = str(exc)
        else:
            reason = f"{type(exc).__name__}: {exc}"
        message = f"pass '{pass_.name}' (#{index + 1}) failed and was rolled back: {reason}"
        if self.dump_on_failure is not None:
            where = self._dump(pass_, snapshot, exc)
            if where is not None:
                message += f"; reproducer in {where}"
        logger.debug("pass failure", exc_info=exc)
        return PassFailed(message, pass_name=pass_.name, model=snapshot)

    def _dump(self, pass_: OnnxpqPass, snapshot: ir.Model, exc: BaseException) -> Path | None:
        from onnxpq.io import save_model

        folder = self.dump_on_failure
        if folder is None:
            return None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_model(snapshot, folder / "model.onnx")
            (folder / "pipeline.txt").write_text(format_pass(pass_, full=True) + "\n")
            (folder / "error.txt").write_text("".join(traceback.format_exception(exc)))
        except (OSError, OnnxpqError) as dump_exc:
            logger.warning("could not write the reproducer to %s: %s", folder, dump_exc)
            return None
        logger.info("reproducer written to %s", folder)
        return folder
