"""Quantization passes and the arithmetic they share."""

from onnxpq.passes.quantize.float16 import Float16Pass
from onnxpq.passes.quantize.static import QuantizeStaticPass

__all__ = ["Float16Pass", "QuantizeStaticPass"]
