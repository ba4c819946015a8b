"""upgrade-opset: newer opset, same outputs, external data kept as references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxpq.core.manager import PassManager
from onnxpq.errors import PipelineError
from onnxpq.io import load_model
from onnxpq.passes.cleanup.upgrade_opset import UpgradeOpsetPass

TEXT = """
<ir_version: 7, opset_import: ["": 11]>
g (float[N, 8] x) => (float[N, 4] y) {
  h = MatMul(x, w)
  s = Constant<value=int64[1] {1}>()
  u = Unsqueeze<axes=[1]>(h)
  r = Squeeze<axes=[1]>(u)
  y = Relu(r)
}
"""


def _model() -> onnx.ModelProto:
    proto = onnx.parser.parse_model(TEXT)
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    return proto


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("version", [13, 17, 21])
def test_upgrade_changes_the_opset_and_keeps_outputs(version: int) -> None:
    model = ir.from_proto(_model())
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    before = _run(model, x)
    result = UpgradeOpsetPass(version)(model)
    assert result.modified and model.opset_imports[""] == version
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    np.testing.assert_array_equal(_run(model, x), before)


def test_attribute_axes_become_inputs_at_opset_13() -> None:
    model = ir.from_proto(_model())
    UpgradeOpsetPass(13)(model)
    unsqueeze = next(n for n in model.graph if n.op_type == "Unsqueeze")
    assert "axes" not in unsqueeze.attributes and len(unsqueeze.inputs) == 2


def test_already_new_enough_is_not_modified() -> None:
    model = ir.from_proto(_model())
    UpgradeOpsetPass(17)(model)
    assert UpgradeOpsetPass(13)(model).modified is False


def test_a_model_importing_only_ai_onnx_ml_is_left_unchanged() -> None:
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["ai.onnx.ml": 1]>\n'
        "g (float[N, 3] x) => (float[N, 3] y) { y = ai.onnx.ml.Binarizer<threshold=0.5>(x) }"
    )
    model = ir.from_proto(proto)
    assert UpgradeOpsetPass(21)(model).modified is False
    assert dict(model.opset_imports) == {"ai.onnx.ml": 1}


def test_through_the_manager_the_numerical_check_passes() -> None:
    manager = PassManager([UpgradeOpsetPass(21)], progress=False)
    manager(ir.from_proto(_model()))
    assert manager.records[0].numerical_check.startswith("passed")


def test_external_weights_stay_references(tmp_path: Path) -> None:
    ir.save(ir.from_proto(_model()), tmp_path / "m.onnx", external_data="m.data", size_threshold_bytes=0)
    model = load_model(tmp_path / "m.onnx")
    UpgradeOpsetPass(21)(model)
    weight = model.graph.initializers["w"].const_value
    assert isinstance(weight, ir.ExternalTensor)
    np.testing.assert_array_equal(weight.numpy(), onnx.numpy_helper.to_array(_model().graph.initializer[0]))


def test_version_out_of_range_is_a_pipeline_error() -> None:
    with pytest.raises(PipelineError, match="version must be in"):
        UpgradeOpsetPass(99)
