"""prune-channels: refits stay only when they bring the model's held-out outputs closer to the unpruned model's.

One tiny MLP, ``y = (x · W1 · W2) ⊙ S``, with 16 hidden units of which the pass
removes 8 (their W1 columns are 20x smaller): 4 removed units read the same
inputs as the kept ones (a refit of W2 predicts them exactly), 4 read inputs no
kept unit sees (nothing predicts them; with 24 calibration samples for 8
features a refit fits noise). Output column 0 carries the predictable units,
100x stronger; column 1 the unpredictable ones. The layer's own held-out error
is dominated by column 0, so the per-layer rule accepts the refit; ``S`` says
which column the model outputs: column 0 (the refit helps the model) or
column 1 (it hurts the model, and the end-to-end check must refuse it).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.passes.prune import channels
from onnxpq.passes.prune.channels import PruneChannelsPass

KEPT = 8  # hidden units that stay (and inputs they read)
CALIBRATION = 24  # samples: 18 per training fold for 8 features


def _mlp(output_column: int, seed: int = 0) -> ir.Model:
    rng = np.random.default_rng(seed)
    quarter = KEPT // 2
    w1 = np.zeros((2 * KEPT, 2 * KEPT))
    w1[:KEPT, :KEPT] = rng.normal(size=(KEPT, KEPT))
    w1[:KEPT, KEPT : KEPT + quarter] = 0.05 * rng.normal(size=(KEPT, quarter))  # predictable from the kept units
    w1[KEPT:, KEPT + quarter :] = 0.05 * rng.normal(size=(KEPT, quarter))  # reads inputs no kept unit reads
    w2 = np.zeros((2 * KEPT, 2))
    w2[:KEPT] = rng.normal(size=(KEPT, 2))
    w2[KEPT : KEPT + quarter, 0] = 200.0 * rng.normal(size=quarter)
    w2[KEPT + quarter :, 1] = 20.0 * rng.normal(size=quarter)
    select = np.eye(2)[output_column]
    proto = onnx.parser.parse_model(
        f"""<ir_version: 8, opset_import: ["" : 17]>
        mlp (float[N, {2 * KEPT}] x) => (float[N, 2] y) {{
            h = MatMul (x, W1)
            o = MatMul (h, W2)
            y = Mul (o, S)
        }}"""
    )
    for node in proto.graph.node:
        node.name = node.output[0]
    for name, array in (("W1", w1), ("W2", w2), ("S", select)):
        proto.graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _samples(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(count, 2 * KEPT)).astype(np.float32)}


def _prune(model: ir.Model, calibration: dict[str, np.ndarray], **options: Any) -> tuple[ir.Model, dict[str, Any]]:
    with PassContext(calibration=calibration):
        manager = PassManager([PruneChannelsPass(0.5, importance="l1", **options)], progress=False)
        result = manager(model)
    return result.model, manager.records[0].details


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _relative_error(model: ir.Model, reference: ir.Model, feeds: dict[str, np.ndarray]) -> float:
    want = _run(reference, feeds).astype(np.float64)
    return float(np.sum((_run(model, feeds) - want) ** 2) / np.sum(want**2))


def _layer(notes: dict[str, Any]) -> dict[str, Any]:
    (group,) = notes["pruned_groups"]
    (layer,) = group["reconstruction"]
    return layer


@pytest.mark.parametrize("inputs", ["original", "pruned"])
def test_refits_that_make_the_model_output_worse_are_discarded(inputs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _mlp(output_column=1)
    calibration, fresh = _samples(CALIBRATION, seed=1), _samples(200, seed=2)
    checked, notes = _prune(model, calibration, reconstruct="on", reconstruct_inputs=inputs)
    plain, _ = _prune(model, calibration, reconstruct="off")
    with monkeypatch.context() as patch:  # the pass as it was: per-layer decisions only
        patch.setattr(channels, "_reference_outputs", lambda *_: (None, "no check in this test"))
        unchecked, unchecked_notes = _prune(model, calibration, reconstruct="on", reconstruct_inputs=inputs)

    check = notes["reconstruction_check"]
    assert check["checked"] and not check["refits_kept"]
    assert check["heldout_output_error_with_refits"] > check["heldout_output_error_without_refits"]
    assert _layer(unchecked_notes)["applied"]  # the layer's own held-out error fell
    assert not _layer(notes)["applied"] and "end-to-end" in _layer(notes)["reason"]
    assert ir.to_proto(checked).SerializeToString() == ir.to_proto(plain).SerializeToString()
    np.testing.assert_array_equal(_run(checked, fresh), _run(plain, fresh))
    assert _relative_error(unchecked, model, fresh) > 1.2 * _relative_error(checked, model, fresh)


@pytest.mark.parametrize("inputs", ["original", "pruned"])
def test_refits_that_bring_the_model_output_closer_are_kept(inputs: str) -> None:
    model = _mlp(output_column=0)
    calibration, fresh = _samples(CALIBRATION, seed=1), _samples(200, seed=2)
    refitted, notes = _prune(model, calibration, reconstruct="on", reconstruct_inputs=inputs)
    plain, _ = _prune(model, calibration, reconstruct="off")

    check = notes["reconstruction_check"]
    assert check["checked"] and check["refits_kept"]
    assert check["heldout_output_error_with_refits"] < 0.5 * check["heldout_output_error_without_refits"]
    assert _layer(notes)["applied"]
    assert _relative_error(refitted, model, fresh) < 0.5 * _relative_error(plain, model, fresh)


def test_error_without_refits_is_the_pruned_models_output_error_in_onnxruntime() -> None:
    model = _mlp(output_column=0)
    calibration = _samples(CALIBRATION, seed=1)
    _, notes = _prune(model, calibration, reconstruct="on")
    plain, _ = _prune(model, calibration, reconstruct="off")
    measured = notes["reconstruction_check"]["heldout_output_error_without_refits"]
    assert measured == pytest.approx(_relative_error(plain, model, calibration), rel=1e-5)


@pytest.mark.parametrize("output_column", [0, 1])
def test_checked_reconstruction_is_deterministic(output_column: int) -> None:
    model = _mlp(output_column)
    calibration = _samples(CALIBRATION, seed=1)
    first, _ = _prune(model, calibration, reconstruct="on")
    second, _ = _prune(model, calibration, reconstruct="on")
    assert ir.to_proto(first).SerializeToString() == ir.to_proto(second).SerializeToString()


def test_one_calibration_sample_falls_back_to_per_layer_decisions(caplog: pytest.LogCaptureFixture) -> None:
    model = _mlp(output_column=0)
    with caplog.at_level(logging.INFO, logger="onnxpq.passes.prune.channels"):
        _, notes = _prune(model, _samples(1, seed=1), reconstruct="on")
    check = notes["reconstruction_check"]
    assert not check["checked"] and "held out" in check["reason"]
    assert "no end-to-end check" in caplog.text
    assert "reason" not in _layer(notes)  # decided by the layer's own error, as without the check
