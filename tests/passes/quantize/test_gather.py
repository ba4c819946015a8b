"""quantize-gather: int8 embedding rows, dequantized after the lookup."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxpq.core.manager import PassManager
from onnxpq.errors import PipelineError
from onnxpq.passes.quantize.gather import QuantizeGatherPass

TEXT = """
<ir_version: 8, opset_import: ["": 17]>
g (int64[N, T] ids) => (float[N, T, 8] y) {
  e = Gather<axis=0>(table, ids)
  y = Relu(e)
}
"""
TIED = """
<ir_version: 8, opset_import: ["": 17]>
g (int64[N, T] ids) => (float[N, T, 200] y) {
  e = Gather<axis=0>(table, ids)
  t = Transpose<perm=[1, 0]>(table)
  y = MatMul(e, t)
}
"""


def _model(text: str = TEXT) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    table = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(table, "table"))
    return ir.from_proto(proto)


def _run(model: ir.Model, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids})[0]


IDS = np.random.default_rng(1).integers(0, 200, (3, 5)).astype(np.int64)


def test_lookups_match_the_float_table_to_int8_precision() -> None:
    model = _model()
    before = _run(model, IDS)
    assert QuantizeGatherPass(min_params=0)(model).modified
    after = _run(model, IDS)
    assert np.max(np.abs(after - before)) <= np.max(np.abs(before)) / 127  # half a step per row, at most one
    assert model.graph.initializers["table_quantized"].const_value.dtype == ir.DataType.INT8
    assert "table" not in model.graph.initializers


def test_graph_output_gather_keeps_its_name() -> None:
    text = TEXT.replace("e = Gather", "y = Gather").replace("  y = Relu(e)\n", "")
    model = _model(text)
    QuantizeGatherPass(min_params=0)(model)
    assert [v.name for v in model.graph.outputs] == ["y"]
    assert _run(model, IDS).shape == (3, 5, 8)


def test_a_table_also_read_by_matmul_stays_float() -> None:
    model = _model(TIED)
    assert QuantizeGatherPass(min_params=0)(model).modified is False


def test_small_tables_are_left_alone_and_second_run_is_a_no_op() -> None:
    model = _model()
    assert QuantizeGatherPass()(model).modified is False  # 1600 values < the default 65536
    QuantizeGatherPass(min_params=0)(model)
    assert QuantizeGatherPass(min_params=0)(model).modified is False


def test_through_the_manager_the_structure_check_passes() -> None:
    manager = PassManager([QuantizeGatherPass(min_params=0)], progress=False)
    manager(_model())
    assert manager.records[0].details["quantized_tables"]["table"]["sqnr_db"] > 35


def test_negative_min_params_is_a_pipeline_error() -> None:
    with pytest.raises(PipelineError):
        QuantizeGatherPass(min_params=-1)
