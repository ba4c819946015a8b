"""Pass infrastructure: pass base class, registry, pipeline text, context, instruments, manager."""

from onnxpq.core.context import AnalysisCache, PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pass_base import OnnxpqPass, OptionSpec, option_specs
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.core.registry import get_pass_class, register_pass, registered_passes

__all__ = [
    "AnalysisCache",
    "PassContext",
    "PassManager",
    "OnnxpqPass",
    "OptionSpec",
    "option_specs",
    "format_pipeline",
    "parse_pipeline",
    "get_pass_class",
    "register_pass",
    "registered_passes",
]
