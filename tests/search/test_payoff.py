"""int8 is kept only where it pays: quantized nodes that make the model slower go back to float.

Timing itself is not asserted (that belongs in benchmarks); the decision logic is
driven by injected ratios, and the real timer is checked for its contract.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.search import payoff
from onnxpq.targets.profile import load_target
from onnxpq.workflows import optimize

DATA = resources.files("onnxpq").joinpath("data")
PIPELINE = "quantize-static{exclude_op_types=[MatMul]}"


def _conv_chain() -> ir.Model:
    """x -> Conv(a) -> Relu -> Conv(b) -> Relu -> Conv(c): three quantizable convs with different MACs."""
    text = """
    <ir_version: 8, opset_import: ["": 17]>
    g (float[N, 1, 8, 8] x) => (float[N, 4, 8, 8] y) {
      h1 = Conv <pads = [1, 1, 1, 1]> (x, wa)
      r1 = Relu(h1)
      h2 = Conv <pads = [1, 1, 1, 1]> (r1, wb)
      r2 = Relu(h2)
      y = Conv <pads = [1, 1, 1, 1]> (r2, wc)
    }
    """
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    for name, shape in (("wa", (8, 1, 3, 3)), ("wb", (16, 8, 3, 3)), ("wc", (4, 16, 3, 3))):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    for node, name in zip(proto.graph.node[::2], ("a", "b", "c"), strict=True):
        node.name = name
    return ir.from_proto(proto)


def _run(model: ir.Model, text: str, calibration: dict[str, np.ndarray]):
    passes = parse_pipeline(text)
    manager = PassManager(passes)
    result = manager(model)
    return result.model, manager.records, passes


def _quantized_ops(model: ir.Model) -> dict[str, bool]:
    """Per conv name: whether its weight comes through a DequantizeLinear."""
    found = {}
    for node in model.graph:
        if node.op_type == "Conv":
            producer = node.inputs[1].producer()
            found[node.name] = producer is not None and producer.op_type == "DequantizeLinear"
    return found


def _fake_ratios(faster: Sequence[str], calls: list[int]):
    """Timer stand-in: a variant is 20 % faster than the current model when it newly gives back a name in ``faster``."""

    def fake(models, feed, *, providers, threads, budget_s, **_):
        calls.append(len(models))
        ratios = [1.0, 1.0]  # current, float reference
        already = {name for name, q in _quantized_ops(models[0]).items() if not q}
        for model in models[2:]:
            given_back = {name for name, q in _quantized_ops(model).items() if not q} - already
            ratios.append(0.8 if given_back & set(faster) else 1.05)
        return ratios[: len(models)]

    return fake


@pytest.fixture
def chain_setup():
    model = _conv_chain()
    rng = np.random.default_rng(2)
    calib = {"x": rng.standard_normal((16, 1, 8, 8)).astype(np.float32)}
    ctx = PassContext(target=load_target("cpu"), calibration=calib)
    with ctx:
        quantized, records, passes = _run(model, PIPELINE, calib)
        yield model, quantized, records, passes, calib


def test_a_node_whose_float_version_is_faster_is_given_back(chain_setup, monkeypatch) -> None:
    model, quantized, records, passes, calib = chain_setup
    names = [n for r in records for n in r.details.get("quantized_node_names", [])]
    assert set(names) >= {"a", "b", "c"}
    calls: list[int] = []
    monkeypatch.setattr(payoff, "interleaved_ratios", _fake_ratios(["a"], calls))
    result = payoff.give_back_slow_nodes(
        model, passes, quantized, records, names, {"x": calib["x"][:1]},
        make_manager=lambda run: PassManager(run),
    )
    assert result.given_back == ["a"]
    assert _quantized_ops(result.model) == {"a": False, "b": True, "c": True}
    assert "exclude_nodes=[a]" in format_pipeline(result.passes)
    assert {t["give_back"] for t in result.trials if t["round"] == 1} == set(names)
    assert len(calls) >= 2  # a second round found nothing faster and stopped


def test_nothing_is_given_back_when_every_int8_node_pays(chain_setup, monkeypatch) -> None:
    model, quantized, records, passes, calib = chain_setup
    names = [n for r in records for n in r.details.get("quantized_node_names", [])]
    monkeypatch.setattr(payoff, "interleaved_ratios", _fake_ratios([], []))
    result = payoff.give_back_slow_nodes(
        model, passes, quantized, records, names, {"x": calib["x"][:1]},
        make_manager=lambda run: PassManager(run),
    )
    assert result.given_back == []
    assert result.model is quantized
    assert format_pipeline(result.passes) == format_pipeline(passes)


def test_candidates_are_capped_cheapest_first(chain_setup, monkeypatch) -> None:
    model, quantized, records, passes, calib = chain_setup
    names = [n for r in records for n in r.details.get("quantized_node_names", [])]
    monkeypatch.setattr(payoff, "interleaved_ratios", _fake_ratios([], []))
    result = payoff.give_back_slow_nodes(
        model, passes, quantized, records, names, {"x": calib["x"][:1]},
        make_manager=lambda run: PassManager(run), max_candidates=1,
    )
    # MACs per inference: a = 8·9·64 = 4,608; c = 4·144·64 = 36,864; b = 16·72·64 = 73,728
    assert [t["give_back"] for t in result.trials] == ["a"]


def test_interleaved_ratios_measures_every_model_against_the_first(chain_setup) -> None:
    model, quantized, _records, _passes, calib = chain_setup
    ratios = payoff.interleaved_ratios(
        [model, quantized, model], {"x": calib["x"][:1]},
        providers=["CPUExecutionProvider"], threads=1, budget_s=0.05, min_rounds=5,
    )
    assert ratios[0] == 1.0
    assert len(ratios) == 3 and all(r > 0 for r in ratios)


def test_optimize_reports_the_payoff_on_a_measured_target(tmp_path: Path) -> None:
    out = tmp_path / "d.onnx"
    result = optimize(
        str(DATA / "digits_cnn.onnx"), out, target="cpu", data=str(DATA / "digits_test.npz"),
        report=tmp_path / "r.json", latency_runs=5, progress=False,
    )
    paid = json.loads((tmp_path / "r.json").read_text())["int8_payoff"]
    assert paid["method"].startswith("measured: onnxruntime CPUExecutionProvider, batch 1")
    assert paid["trials"], "every candidate was timed at least once"
    for name in paid["given_back"]:  # what was given back is in the pipeline text that reproduces the model
        assert name in result.report["pipeline"]
    assert isinstance(paid["pays"], bool)


def test_payoff_can_be_switched_off(tmp_path: Path) -> None:
    result = optimize(
        str(DATA / "digits_cnn.onnx"), tmp_path / "d.onnx", target="cpu", data=str(DATA / "digits_test.npz"),
        latency_runs=5, progress=False, payoff=False,
    )
    assert "int8_payoff" not in result.report
    assert "exclude_nodes" not in result.report["pipeline"]


def test_giving_back_undoes_quantization_only_not_pruning() -> None:
    from onnxpq.search.fallback import with_excluded

    passes = parse_pipeline("prune-channels{ratio=0.3},quantize-static,quantize-dynamic")
    text = format_pipeline(with_excluded(passes, ["conv1"]))
    assert text.startswith("prune-channels{ratio=0.3},")
    assert "quantize-static{exclude_nodes=[conv1]}" in text and "quantize-dynamic{exclude_nodes=[conv1]}" in text


def test_the_payoff_search_prunes_once_and_gives_what_its_pipeline_text_gives(tmp_path: Path, monkeypatch) -> None:
    """Candidates resume from the model before the first quantizing pass: prune-channels runs once, not per candidate."""
    from onnxpq.passes.prune.channels import PruneChannelsPass

    calls: list[int] = []
    original = PruneChannelsPass.call

    def counted(self, model):
        calls.append(1)
        return original(self, model)

    monkeypatch.setattr(PruneChannelsPass, "call", counted)
    monkeypatch.setattr(payoff, "interleaved_ratios", _fake_ratios(["conv1"], []))
    common = dict(target="cpu", data=str(DATA / "digits_test.npz"), calibration=str(DATA / "digits_calib.npz"),
                  latency_runs=3, progress=False)  # fmt: skip
    pipeline = "fold-batchnorm,prune-channels{ratio=0.5,reconstruct=off},quantize-static{exclude_op_types=[MatMul]}"
    result = optimize(str(DATA / "digits_cnn.onnx"), tmp_path / "paid.onnx", pipeline=pipeline, payoff=True, **common)
    assert result.report["int8_payoff"]["given_back"] == ["conv1"]
    assert len(calls) == 1
    again = optimize(str(DATA / "digits_cnn.onnx"), tmp_path / "again.onnx", pipeline=result.report["pipeline"],
                     payoff=False, **common)  # fmt: skip
    assert (tmp_path / "paid.onnx").read_bytes() == (tmp_path / "again.onnx").read_bytes()
