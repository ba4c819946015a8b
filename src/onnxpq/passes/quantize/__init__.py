"""Quantization passes and the arithmetic they share."""

from onnxpq.passes.quantize.activations import QuantizeActivationsPass
from onnxpq.passes.quantize.dynamic import QuantizeDynamicPass
from onnxpq.passes.quantize.float16 import Float16Pass
from onnxpq.passes.quantize.gather import QuantizeGatherPass
from onnxpq.passes.quantize.matmul_nbits import MatMulNBitsPass
from onnxpq.passes.quantize.static import QuantizeStaticPass
from onnxpq.passes.quantize.weights import QuantizeWeightsPass

__all__ = [
    "Float16Pass",
    "MatMulNBitsPass",
    "QuantizeActivationsPass",
    "QuantizeDynamicPass",
    "QuantizeGatherPass",
    "QuantizeStaticPass",
    "QuantizeWeightsPass",
]
