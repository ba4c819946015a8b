"""onnxpq: prune and quantize ONNX models for a target's hardware, and prove the result in onnxruntime.

Public API::

    import onnxpq
    result = onnxpq.optimize("model.onnx", "model.opt.onnx", target="cpu", data="val.npz")
    result.report["optimized"]["latency_ms"]["p50"]
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("onnxpq")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

from onnxpq.analysis.weights_report import WeightAnalysis, analyze
from onnxpq.bundle import BundleError, PackageResult, VerifyResult, package, verify_bundle
from onnxpq.config import ConfigError
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.search.explore import ExploreResult, explore
from onnxpq.errors import (
    DataError,
    GateFailed,
    IsolationError,
    ModelLoadError,
    NonFiniteWeightsError,
    OnnxpqError,
    OutputError,
    PassFailed,
    PipelineError,
    TargetError,
    UnsafeModelError,
)
from onnxpq.targets.profile import Target, load_target
from onnxpq.workflows import OptimizeResult, ValidateResult, optimize, validate


class Pipeline:
    """A parsed pipeline: ``Pipeline("fold-batchnorm,eliminate-dead")``; ``str()`` gives canonical text."""

    def __init__(self, text: str) -> None:
        self.passes = parse_pipeline(text)

    def __str__(self) -> str:
        return format_pipeline(self.passes)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.passes == other.passes

    def __hash__(self) -> int:
        return hash(str(self))


__all__ = [
    "__version__",
    "optimize",
    "validate",
    "analyze",
    "WeightAnalysis",
    "explore",
    "ExploreResult",
    "package",
    "verify_bundle",
    "PackageResult",
    "VerifyResult",
    "load_target",
    "Pipeline",
    "Target",
    "OptimizeResult",
    "ValidateResult",
    "OnnxpqError",
    "ModelLoadError",
    "UnsafeModelError",
    "PipelineError",
    "PassFailed",
    "TargetError",
    "DataError",
    "OutputError",
    "GateFailed",
    "BundleError",
    "ConfigError",
    "IsolationError",
    "NonFiniteWeightsError",
]
