"""``upgrade-opset``: convert the default-domain opset up to ``version``.

Quantization needs recent opsets: per-axis Q/DQ needs 13, blocked Q/DQ and
INT4/UINT4 need 21. This pass wraps ``onnx.version_converter`` (the reference
implementation of the adapters between opsets): the model is serialised with
external tensors left as references (never read), converted, and its graph
swapped in; ``ir_version`` is raised to what the opset requires (10 for opset
21+, 8 for 14+). Models already at or above ``version`` are left untouched;
the pass never downgrades. Exact (the manager checks it numerically).
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir

from onnxpq.core.context import PassContext
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.registry import register_pass
from onnxpq.errors import PipelineError

__all__ = ["UpgradeOpsetPass"]

logger = logging.getLogger(__name__)

#: Lowest ir_version that may carry a given opset (from onnx's version table).
_IR_FOR_OPSET = ((21, 10), (19, 9), (14, 8), (13, 7))


def _external_base_dir(model: ir.Model) -> str | None:
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                return str(value.const_value.base_dir)
    return None


@register_pass
class UpgradeOpsetPass(OnnxpqPass):
    """Convert the model to a newer default-domain opset with onnx's version converter."""

    name = "upgrade-opset"
    exact = True

    def __init__(self, version: int = 21) -> None:
        if not 7 <= version <= onnx.defs.onnx_opset_version():
            raise PipelineError(
                f"upgrade-opset: version must be in 7..{onnx.defs.onnx_opset_version()}, got {version}"
            )
        self.version = version

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        if current == 0:  # an ai.onnx.ml-only model: nothing in the default domain to convert
            logger.info("upgrade-opset: the model imports no default-domain opset; left unchanged")
            return ir.passes.PassResult(model, False)
        if current >= self.version:
            logger.debug("upgrade-opset: opset %d already >= %d", current, self.version)
            return ir.passes.PassResult(model, False)
        base_dir = _external_base_dir(model)
        try:
            converted = onnx.version_converter.convert_version(ir.to_proto(model), self.version)
        except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError/ConvertError variants
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(f"upgrade-opset: onnx's converter cannot take opset {current} to {self.version}: {first}") from exc
        new = ir.from_proto(converted)
        if base_dir is not None:
            ir.external_data.set_base_dir(new.graph, base_dir)
        model.graph = new.graph
        for function in new.functions.values():
            model.functions[function.identifier()] = function
        for opset, ir_version in _IR_FOR_OPSET:
            if self.version >= opset:
                model.ir_version = max(model.ir_version, ir_version)
                break
        PassContext.current().note("opset", f"{current} -> {self.version}")
        logger.info("upgrade-opset: opset %d -> %d", current, self.version)
        return ir.passes.PassResult(model, True)
