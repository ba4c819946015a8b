"""The errors onnxpq raises on purpose.

Every error the user can cause derives from :class:`OnnxpqError`; the CLI maps
them to exit code 2 (bad input or usage), except :class:`GateFailed`, which is
exit code 1 (the job ran, the output was written, but a gate did not hold).
Messages are one line: what went wrong, where, and what to do.
"""

from __future__ import annotations

import re

__all__ = [
    "OnnxpqError",
    "ModelLoadError",
    "UnsafeModelError",
    "NonFiniteWeightsError",
    "IsolationError",
    "PipelineError",
    "PassFailed",
    "TargetError",
    "DataError",
    "OutputError",
    "GateFailed",
]


class OnnxpqError(Exception):
    """Base of every error onnxpq raises on purpose (exit code 2 in the CLI).

    ``str(error)`` is always one line: control characters that a hostile model
    can put in a name it quotes (newlines, escapes) are shown escaped.
    """

    exit_code: int = 2

    def __str__(self) -> str:
        return _CONTROL.sub(_escape, super().__str__())


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _escape(match: re.Match[str]) -> str:
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(match.group(), f"\\x{ord(match.group()):02x}")


class ModelLoadError(OnnxpqError):
    """The model file cannot be read as a valid ONNX model."""


class UnsafeModelError(ModelLoadError):
    """The model refers to data outside its folder, or its external data is inconsistent."""


class PipelineError(OnnxpqError):
    """Pipeline text or pass options are invalid."""


class PassFailed(OnnxpqError):
    """A pass raised, or broke the model's structure or (for exact passes) its numerics.

    The pass manager has rolled the model back to its state before the pass;
    ``pass_name`` names the pass and ``model`` (when set) is the rolled-back model.
    """

    def __init__(self, message: str, *, pass_name: str, model: object | None = None) -> None:
        super().__init__(message)
        self.pass_name = pass_name
        self.model = model


class TargetError(OnnxpqError):
    """A target profile is missing or invalid."""


class DataError(OnnxpqError):
    """Input data (``--data`` / ``--calibration``) does not fit the model."""


class OutputError(OnnxpqError):
    """The output cannot be written where asked (e.g. onto the input model)."""


class GateFailed(OnnxpqError):
    """The job completed but a gate (accuracy drop, latency budget) did not hold."""

    exit_code = 1


class NonFiniteWeightsError(ModelLoadError):
    """A weight holds NaN or Inf values (refused before any pass quantizes it, unless asked to warn)."""


class IsolationError(ModelLoadError):
    """Loading or first-running the model in an isolated process broke a limit or crashed it (see onnxpq.isolation).

    ``limit`` says which: ``"memory"``, ``"time"``, ``"signal"`` or None (another failure).
    """

    def __init__(self, message: str, *, limit: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit
