"""The context a pass runs in: target, calibration data, cached analyses.

Passes read it with ``PassContext.current()``. Analyses are classes with a
``compute(model) -> instance`` classmethod; the cache keeps one result per
class and drops every result a modifying pass does not list in ``preserves``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from onnxpq.io import TensorStore
    from onnxpq.targets.profile import Target

__all__ = ["Analysis", "AnalysisCache", "PassContext"]

logger = logging.getLogger(__name__)

A = TypeVar("A", bound="Analysis")


class Analysis(Protocol):
    """A read-only fact about a model, computed on demand and cached."""

    @classmethod
    def compute(cls: type[A], model: ir.Model) -> A: ...


class AnalysisCache:
    """One cached result per analysis class, tied to the model it was computed on."""

    def __init__(self) -> None:
        self._results: dict[type, tuple[int, Any]] = {}

    def get(self, analysis: type[A], model: ir.Model) -> A:
        """The analysis of ``model``, computed once until invalidated."""
        cached = self._results.get(analysis)
        if cached is not None and cached[0] == id(model):
            return cached[1]
        logger.debug("computing analysis %s", analysis.__name__)
        result = analysis.compute(model)
        self._results[analysis] = (id(model), result)
        return result

    def invalidate(self, preserved: tuple[type, ...] = ()) -> None:
        """Drop every cached analysis except those in ``preserved``."""
        self._results = {k: v for k, v in self._results.items() if k in preserved}

    def __contains__(self, analysis: type) -> bool:
        return analysis in self._results


_CURRENT: contextvars.ContextVar[PassContext | None] = contextvars.ContextVar("onnxpq_pass_context", default=None)


class PassContext:
    """What passes may know beyond the model. Use as a context manager.

    Attributes:
        target: the target profile, or None when passes run without one.
        calibration: arrays named after the model inputs (first axis = samples), or None.
        analyses: the analysis cache.
        details: what the running pass noted with :meth:`note`; the pass
            manager moves it into that pass's record after every pass.
        memo: results a pass may reuse when the same pipeline runs again on
            the same input within this context (calibration ranges, while the
            accuracy gate re-runs the pipeline with nodes given back to float).
            A context serves one input model and one calibration set.
        tensor_store: where passes put the large tensors they make (:meth:`stored`),
            or None to keep them in memory; see :class:`onnxpq.io.TensorStore`.
    """

    def __init__(
        self,
        *,
        target: Target | None = None,
        calibration: Mapping[str, np.ndarray] | None = None,
        tensor_store: TensorStore | None = None,
    ) -> None:
        self.target = target
        self.calibration = dict(calibration) if calibration is not None else None
        self.tensor_store = tensor_store
        self.analyses = AnalysisCache()
        self.details: dict[str, Any] = {}
        self.memo: dict[Any, Any] = {}
        self._token: contextvars.Token[PassContext | None] | None = None

    def note(self, key: str, value: Any) -> None:
        """Record a fact about the running pass (what it quantized, what it skipped); it goes into the report."""
        self.details[key] = value

    def stored(self, tensor: ir.TensorProtocol) -> ir.TensorProtocol:
        """A new tensor as the model should hold it: moved to the tensor store when there is one (large ones only)."""
        return self.tensor_store.put(tensor) if self.tensor_store is not None else tensor

    @staticmethod
    def active() -> PassContext | None:
        """The active context, or None."""
        return _CURRENT.get()

    @staticmethod
    def current() -> PassContext:
        """The active context; an empty one if none is active."""
        ctx = _CURRENT.get()
        return ctx if ctx is not None else PassContext()

    def __enter__(self) -> PassContext:
        self._token = _CURRENT.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
