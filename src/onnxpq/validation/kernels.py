"""What actually runs: the integer-kernel census of onnxruntime's optimized graph.

onnxruntime fuses QDQ groups into integer kernels when the session is
created (DQ→Conv→Q becomes QLinearConv, DQ→Gemm→Q becomes QGemm, ...). A
Q/DQ placement that does not match its fusion rules silently leaves a float
kernel between DQ and Q — slower than no quantization at all. This module
asks onnxruntime for the graph after its optimizations
(``SessionOptions.optimized_model_filepath``) and counts, per op type, the
integer kernels and the float compute kernels that remain.
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from onnxpq.core.session import make_session

__all__ = ["KernelCensus", "kernel_census", "INTEGER_KERNELS", "FLOAT_COMPUTE_KERNELS"]

logger = logging.getLogger(__name__)

#: Kernels that compute on integers (onnxruntime CPU names).
INTEGER_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax",
    "QLinearWhere", "QLinearReduceMean", "QAttention", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "MatMulNBits", "QOrderedMatMul", "NhwcQLinearConv",
})

#: Float kernels that carry the MACs (a quantized model should have few of these left).
FLOAT_COMPUTE_KERNELS = frozenset({
    "Conv", "FusedConv", "NchwcConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
    "Attention", "MultiHeadAttention",
})


@dataclass(frozen=True)
class KernelCensus:
    """Counts of kernels in onnxruntime's optimized graph."""

    integer: dict[str, int]
    float_compute: dict[str, int]
    quantize_nodes: int
    dequantize_nodes: int
    provider: str

    @property
    def integer_total(self) -> int:
        return sum(self.integer.values())

    @property
    def float_total(self) -> int:
        return sum(self.float_compute.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["integer_total"] = self.integer_total
        data["float_compute_total"] = self.float_total
        return data


def kernel_census(model_path: str | os.PathLike[str], providers: Sequence[str] = ("CPUExecutionProvider",)) -> KernelCensus:
    """Create a session for ``model_path``, save its optimized graph, and count what runs."""
    with tempfile.TemporaryDirectory(prefix="onnxpq-census-") as folder:
        optimized = Path(folder) / "optimized.onnx"
        session = make_session(Path(model_path), providers=providers, optimized_model_path=str(optimized))
        provider = session.get_providers()[0]
        del session
        proto = onnx.load(str(optimized), load_external_data=False)
    counts: collections.Counter[str] = collections.Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(proto.graph)
    return KernelCensus(
        integer={k: v for k, v in sorted(counts.items()) if k in INTEGER_KERNELS},
        float_compute={k: v for k, v in sorted(counts.items()) if k in FLOAT_COMPUTE_KERNELS},
        quantize_nodes=counts.get("QuantizeLinear", 0) + counts.get("DynamicQuantizeLinear", 0),
        dequantize_nodes=counts.get("DequantizeLinear", 0),
        provider=provider,
    )
