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

Checkpoints. The searches that re-run a pipeline with a few nodes excluded
(int8 pay-off, accuracy gate) change only the options of the quantizing
passes; everything before the first of them (cleanup, ``prune-channels`` with
its calibration runs and refits) would be recomputed identically for every
candidate. A manager built with ``checkpoint_after=k`` keeps the model after
its first k passes (a clone: O(nodes), tensors shared) with their records; a
manager built with ``resume=`` that checkpoint, run on the *same input model
object*, whose first k passes have the same full pipeline text, starts from
that model and those records instead of running them again. Passes are
deterministic (same input and options, same output: ``test_determinism``), so
the result is the one a full run gives. Any other input, or any difference in
those passes' text, runs everything.

Analyses cached in the pass context are dropped when a run starts: they are
keyed by the identity of a model object, and every run works on a new clone.
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

__all__ = ["Checkpoint", "PassManager"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """The model after the first ``len(texts)`` passes of a run on ``source``, and their records."""

    source: ir.Model  # the run's input model (a resumed run must be given this very object)
    texts: tuple[str, ...]  # full pipeline text of each pass so far
    model: ir.Model
    records: tuple[PassRecord, ...]


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
        checkpoint_after: keep :attr:`checkpoint` after this many passes (None or 0: none).
        resume: a checkpoint to start from when its passes and input match (see the module docstring).
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
        checkpoint_after: int | None = None,
        resume: Checkpoint | None = None,
    ) -> None:
        super().__init__(list(passes), steps=1, early_stop=False)
        self.verify_each = verify_each
        self.check_numerics = check_numerics
        self.check_inputs = check_inputs
        self.progress = progress
        self.dump_on_failure = Path(dump_on_failure) if dump_on_failure is not None else None
        self.extra_instruments = list(instruments)
        self.records: list[PassRecord] = []
        self.checkpoint_after = checkpoint_after
        self.resume = resume
        self.checkpoint: Checkpoint | None = None

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
        ctx.analyses.invalidate()
        instruments = self._instruments()
        texts = tuple(format_pass(p, full=True) for p in self.passes)
        self.records, self.checkpoint = [], None
        done = 0  # passes whose result comes from the checkpoint
        if self.resume is not None and self.resume.source is model and texts[: len(self.resume.texts)] == self.resume.texts:
            done = len(self.resume.texts)
            work = self.resume.model.clone()
            self.records = [copy.copy(r) for r in self.resume.records]
            logger.info("resuming after %d unchanged pass(es): %s", done, ",".join(r.name for r in self.records))
        else:
            work = model.clone()
        overall = any(r.modified for r in self.records)
        if self.checkpoint_after and self.checkpoint_after == done:
            self.checkpoint = self.resume
        for index, pass_ in enumerate(self.passes[done:], done):
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
            if self.checkpoint_after == index + 1:
                self.checkpoint = Checkpoint(model, texts[: index + 1], work.clone(), tuple(self.records))
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
