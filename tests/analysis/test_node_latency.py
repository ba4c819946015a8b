"""Tests for onnxpq.analysis.node_latency: one-layer models, profiling, the cache, Spearman's rho.

Latency *values* are not asserted (timing belongs in benchmarks): only that they are positive and cached.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from onnxpq.analysis.cost_models import LayerChoice, LayerFacts, layer_cost
from onnxpq.analysis.node_latency import LatencyCache, build_layer_model, layer_latency_ms, precision_of, spearman
from onnxpq.errors import OnnxpqError
from onnxpq.targets.profile import load_target

CONV = LayerFacts(
    node="conv", op_type="Conv", weight="w", weight_shape=(16, 8, 3, 3), params=16 * 72, bias="b", bias_params=16,
    macs=16 * 72 * 64, out_channels=16, out_channel_axis=0, input_shape=(1, 8, 8, 8), output_shape=(1, 16, 8, 8),
    attributes=(("group", 1), ("kernel_shape", (3, 3)), ("pads", (1, 1, 1, 1))),
)
DEPTHWISE = dataclasses.replace(
    CONV, weight_shape=(8, 1, 3, 3), params=72, out_channels=8, bias=None, bias_params=0,
    output_shape=(1, 8, 8, 8), attributes=(("group", 8), ("kernel_shape", (3, 3)), ("pads", (1, 1, 1, 1))),
)


def test_spearman_of_monotone_reversed_and_tied_sequences() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = [1, 2.5, 2.5, 4] (0-based shifted), y = [1, 2, 3, 4]: Pearson of ranks = 0.9487
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)


def test_one_layer_model_keeps_channels_rounded_to_the_target_multiple() -> None:
    model = build_layer_model(CONV, LayerChoice(channel_keep=0.3), load_target("vbit"))  # multiple 16 -> all 16 kept
    assert tuple(model.graph.initializers["w"].const_value.shape) == (16, 8, 3, 3)
    cpu1 = dataclasses.replace(load_target("cpu"), sparsity=dataclasses.replace(load_target("cpu").sparsity, channel_multiple=1))
    model = build_layer_model(CONV, LayerChoice(channel_keep=0.5), cpu1)
    assert tuple(model.graph.initializers["w"].const_value.shape) == (8, 8, 3, 3)
    assert tuple(model.graph.initializers["b"].const_value.shape) == (8,)


def test_depthwise_conv_keeps_inputs_and_groups_in_step_with_outputs() -> None:
    cpu1 = dataclasses.replace(load_target("cpu"), sparsity=dataclasses.replace(load_target("cpu").sparsity, channel_multiple=1))
    model = build_layer_model(DEPTHWISE, LayerChoice(channel_keep=0.5), cpu1)
    node = next(iter(model.graph))
    assert node.attributes["group"].value == 4
    assert list(model.graph.inputs[0].shape) == [1, 4, 8, 8]


def test_density_zeroes_the_smallest_weights() -> None:
    model = build_layer_model(CONV, LayerChoice(density=0.25))
    weight = model.graph.initializers["w"].const_value.numpy()
    assert np.count_nonzero(weight) == round(0.25 * weight.size)


@pytest.mark.parametrize(
    ("facts", "choice", "label", "pass_name"),
    [
        (CONV, LayerChoice(8, 8), "qdq-w8a8-uint8", "quantize-static"),
        (dataclasses.replace(CONV, op_type="MatMul"), LayerChoice(8, None), "dynamic-int8", "quantize-dynamic"),
        (dataclasses.replace(CONV, op_type="MatMul"), LayerChoice(4, None), "nbits4", "matmul-nbits"),
        (CONV, LayerChoice(), "float", None),
    ],
    ids=["static", "dynamic", "nbits", "float"],
)
def test_precision_maps_to_the_onnxpq_pass_that_realises_it(facts: LayerFacts, choice: LayerChoice, label: str, pass_name: str | None) -> None:
    got_label, pipeline = precision_of(facts, choice, load_target("cpu"))
    assert got_label == label
    assert (pipeline.split("{")[0] if pipeline else None) == pass_name


def test_measured_latency_is_positive_and_cached(tmp_path: Path) -> None:
    cache = LatencyCache(tmp_path / "latency.json")
    first = layer_latency_ms(CONV, LayerChoice(8, 8), cache=cache, runs=3, warmup=1)
    assert first > 0
    entries = json.loads((tmp_path / "latency.json").read_text())["entries"]
    assert len(entries) == 1 and "qdq-w8a8-uint8" in next(iter(entries))
    again = layer_cost(CONV, LayerChoice(8, 8), "measured", load_target("cpu"), cache=LatencyCache(tmp_path / "latency.json"))
    assert again == first  # read back from the file, not re-measured


def test_measured_refuses_a_provider_this_machine_lacks(tmp_path: Path) -> None:
    target = dataclasses.replace(load_target("cpu"), providers=("NoSuchExecutionProvider",))
    with pytest.raises(OnnxpqError, match="NoSuchExecutionProvider"):
        layer_latency_ms(CONV, LayerChoice(), target, cache=tmp_path / "c.json")
