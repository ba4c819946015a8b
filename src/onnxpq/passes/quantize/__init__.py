"""Quantization passes: static QDQ (weights + calibrated activations), and the shared arithmetic."""

from onnxpq.passes.quantize.static import QuantizeStaticPass

__all__ = ["QuantizeStaticPass"]
