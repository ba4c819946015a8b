"""Tests for onnxpq.interop: gs.Graph <-> onnx_ir round trips and an onnxpq pipeline run on a gs.Graph."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

gs = pytest.importorskip("onnx_graphsurgeon", reason="onnx-graphsurgeon (extra [gs]) is not installed")

from onnxpq.errors import OnnxpqError, OutputError  # noqa: E402
from onnxpq.interop import MissingExtraError, from_graphsurgeon, optimize_graphsurgeon, to_graphsurgeon  # noqa: E402

OPSET = 21


def _conv_net() -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(4, 3x3, pad 1) + bias -> Relu -> Flatten -> Gemm(256 -> 5)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "conv.w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "conv.b"),
        numpy_helper.from_array(rng.standard_normal((5, 256)).astype(np.float32) * 0.1, "fc.w"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32) * 0.1, "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


def _dynamic_matmul() -> onnx.ModelProto:
    """com.microsoft.DynamicQuantizeMatMul(x[N,4], int8 w[4,3]): a custom domain to keep."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeMatMul", ["x", "w", "s", "z"], ["y"], name="dqmm", domain="com.microsoft")],
        "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(rng.integers(-127, 128, (4, 3)).astype(np.int8), "w"),
            numpy_helper.from_array(np.full(3, 0.02, np.float32), "s"),
            numpy_helper.from_array(np.zeros(3, np.int8), "z"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    return model


def _x(shape: tuple[int, ...], seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _run(model: onnx.ModelProto | ir.Model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _ops(model: ir.Model) -> list[tuple[str, str, str]]:
    return [(node.domain, node.op_type, node.name or "") for node in model.graph]


@pytest.mark.parametrize(
    ("build", "feed"),
    [(_conv_net, {"x": _x((2, 3, 8, 8))}), (_dynamic_matmul, {"x": _x((6, 4))})],
    ids=["conv-net", "com.microsoft"],
)
def test_round_trip_keeps_structure_domains_and_outputs(build, feed) -> None:  # noqa: ANN001
    proto = build()
    model = ir.from_proto(proto)
    back = from_graphsurgeon(to_graphsurgeon(model))
    assert isinstance(back, ir.Model)
    assert _ops(back) == _ops(model)
    assert back.opset_imports == model.opset_imports
    assert sorted(back.graph.initializers) == sorted(model.graph.initializers)
    for expected, got in zip(_run(proto, feed), _run(back, feed), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_to_graphsurgeon_accepts_a_model_proto_and_a_path(tmp_path: Path) -> None:
    proto = _conv_net()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    for source in (proto, path):
        graph = to_graphsurgeon(source)
        assert isinstance(graph, gs.Graph)
        assert [n.op for n in graph.nodes] == ["Conv", "Relu", "Flatten", "Gemm"]


def test_a_graph_edited_in_graphsurgeon_runs_after_from_graphsurgeon() -> None:
    graph = to_graphsurgeon(_conv_net())
    relu = next(n for n in graph.nodes if n.op == "Relu")
    relu.op = "Sigmoid"  # a TensorRT-side edit
    model = from_graphsurgeon(graph)
    feed = {"x": _x((2, 3, 8, 8))}
    assert [n.op_type for n in model.graph] == ["Conv", "Sigmoid", "Flatten", "Gemm"]
    assert not np.allclose(_run(model, feed)[0], _run(_conv_net(), feed)[0])


def test_external_data_is_loaded_into_the_graph(tmp_path: Path) -> None:
    proto = _conv_net()
    path = tmp_path / "ext.onnx"
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").is_file()
    graph = to_graphsurgeon(path)
    weight = next(t for t in graph.tensors().values() if t.name == "conv.w")
    np.testing.assert_array_equal(weight.values, numpy_helper.to_array(_conv_net().graph.initializer[0]))
    feed = {"x": _x((2, 3, 8, 8))}
    np.testing.assert_array_equal(_run(from_graphsurgeon(graph), feed)[0], _run(_conv_net(), feed)[0])


def test_tensors_over_the_limit_are_refused_with_a_way_out() -> None:
    with pytest.raises(OutputError, match="onnxpq.optimize"):
        to_graphsurgeon(ir.from_proto(_conv_net()), max_bytes=1024)


def test_model_proto_with_unresolvable_external_data_is_refused(tmp_path: Path) -> None:
    proto = _conv_net()
    onnx.save(proto, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    bare = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    with pytest.raises(OutputError, match="path"):
        to_graphsurgeon(bare)


def test_not_a_graph_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="onnx_graphsurgeon.Graph"):
        from_graphsurgeon(_conv_net())  # type: ignore[arg-type]


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx_graphsurgeon", None)  # import now raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'onnxpq\[gs\]'") as caught:
        to_graphsurgeon(_conv_net())
    assert isinstance(caught.value, ImportError)
    assert isinstance(caught.value, OnnxpqError)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[gs.Graph, gs.Graph, dict[str, np.ndarray], Path]:
    """(input graph, graph from optimize_graphsurgeon, validation feed, folder with r.json and the file-based o.onnx).

    The gpu target: its latency is estimated here, so every quantized node stays quantized.
    """
    from onnxpq.workflows import optimize

    folder = tmp_path_factory.mktemp("gs")
    data = {"x": _x((48, 3, 8, 8), seed=3)}
    graph = to_graphsurgeon(_conv_net())
    result = optimize_graphsurgeon(
        graph, target="gpu", pipeline="quantize-static", data=data, latency_runs=2, progress=False,
        report=folder / "r.json",
    )
    onnx.save(_conv_net(), folder / "m.onnx")
    np.savez(folder / "d.npz", **data)
    optimize(folder / "m.onnx", folder / "o.onnx", target="gpu", pipeline="quantize-static", data=folder / "d.npz",
             latency_runs=2, progress=False)
    return graph, result, data, folder


def test_optimize_graphsurgeon_returns_a_graph_with_qdq(quantized) -> None:  # noqa: ANN001
    _, result, _, _ = quantized
    ops = [n.op for n in result.nodes]
    assert isinstance(result, gs.Graph)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weight_dq = [n for n in result.nodes if n.op == "DequantizeLinear" and isinstance(n.inputs[0], gs.Constant)]
    assert {n.inputs[0].values.dtype for n in weight_dq} <= {np.dtype(np.int8), np.dtype(np.int32)}
    assert weight_dq


def test_optimize_graphsurgeon_matches_the_file_based_optimize(quantized) -> None:  # noqa: ANN001
    _, result, data, folder = quantized
    file_output = folder / "o.onnx"
    feed = {"x": data["x"][:8]}
    from_gs = _run(from_graphsurgeon(result), feed)[0]
    from_file = _run(onnx.load(file_output), feed)[0]
    np.testing.assert_array_equal(from_gs, from_file)
    reference = _run(_conv_net(), feed)[0]
    cosine = float(np.sum(reference * from_gs) / (np.linalg.norm(reference) * np.linalg.norm(from_gs)))
    assert cosine > 0.99
    assert not np.array_equal(from_gs, reference)  # it really is quantized


def test_optimize_graphsurgeon_leaves_the_input_graph_alone(quantized) -> None:  # noqa: ANN001
    graph, _, _, _ = quantized
    assert [n.op for n in graph.nodes] == ["Conv", "Relu", "Flatten", "Gemm"]


def test_optimize_graphsurgeon_writes_the_report_it_is_asked_for(quantized) -> None:  # noqa: ANN001
    import json

    _, _, _, folder = quantized
    report = json.loads((folder / "r.json").read_text())
    assert report["pipeline"] == "quantize-static"
    assert report["passes"][0]["details"]["quantized_nodes"] > 0


def test_four_bit_weights_in_opset_21_round_trip() -> None:
    result = optimize_graphsurgeon(
        to_graphsurgeon(_conv_net()), target="vbit", pipeline="quantize-weights{bits=4}", latency_runs=2, progress=False,
    )
    model = from_graphsurgeon(result)
    int4 = [v for v in model.graph.initializers.values() if v.dtype == ir.DataType.INT4]
    assert int4, "4-bit weights should be stored as INT4"
    feed = {"x": _x((2, 3, 8, 8))}
    back = from_graphsurgeon(to_graphsurgeon(model))
    np.testing.assert_array_equal(_run(back, feed)[0], _run(model, feed)[0])


def test_a_bad_pipeline_raises_the_onnxpq_error() -> None:
    from onnxpq.errors import PipelineError

    with pytest.raises(PipelineError):
        optimize_graphsurgeon(to_graphsurgeon(_conv_net()), pipeline="no-such-pass")
