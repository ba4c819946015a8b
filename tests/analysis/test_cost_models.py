"""Tests for onnxpq.analysis.cost_models: layer facts of tiny graphs and the macs/bops/weight-memory formulas."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from onnxpq.analysis.cost_models import (
    FLOAT_CHOICE,
    LayerChoice,
    LayerFacts,
    kept_channels,
    layer_cost,
    layer_facts,
    model_cost,
)
from onnxpq.targets.profile import load_target

_HEADER = '<ir_version: 10, opset_import: ["" : 21]>\n'


def _model(graph_text: str, **initializers: np.ndarray) -> ir.Model:
    proto = onnx.parser.parse_model(_HEADER + graph_text)
    for name, array in initializers.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return ir.from_proto(proto)


def _rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _conv_gemm_model() -> ir.Model:
    return _model(
        """g (float[N,3,8,8] x) => (float[N,10] y) {
            c = Conv <pads=[1,1,1,1]> (x, w, b)
            r = Relu (c)
            f = Flatten (r)
            y = Gemm <transB=1> (f, fw, fb)
        }""",
        w=_rand(16, 3, 3, 3), b=_rand(16), fw=_rand(10, 16 * 8 * 8), fb=_rand(10),
    )


def test_layer_facts_of_conv_and_gemm_at_batch_one() -> None:
    facts = layer_facts(_conv_gemm_model())
    conv, gemm = facts["Conv#0"], facts["Gemm#3"]
    assert list(facts) == ["Conv#0", "Gemm#3"]
    assert conv.macs == 16 * 8 * 8 * 3 * 9 and conv.params == 16 * 27 and conv.bias_params == 16
    assert conv.out_channels == 16 and conv.out_channel_axis == 0
    assert conv.input_shape == (1, 3, 8, 8) and conv.output_shape == (1, 16, 8, 8)
    assert dict(conv.attributes)["pads"] == (1, 1, 1, 1)
    assert gemm.macs == 10 * 1024 and gemm.out_channels == 10 and gemm.out_channel_axis == 0


def test_layer_facts_takes_matmul_with_constant_weight_and_gather_table_only() -> None:
    model = _model(
        """g (int64[B,S] ids, float[B,S,4] a) => (float[B,S,6] y, float[B,S,S] att) {
            e = Gather (table, ids)
            y = MatMul (e, w)
            at = Transpose <perm=[0,2,1]> (a)
            att = MatMul (a, at)
        }""",
        table=_rand(100, 4), w=_rand(4, 6),
    )
    facts = layer_facts(model, {"ids": [1, 7], "a": [1, 7, 4]})
    assert sorted(f.op_type for f in facts.values()) == ["Gather", "MatMul"]
    gather = next(f for f in facts.values() if f.op_type == "Gather")
    matmul = next(f for f in facts.values() if f.op_type == "MatMul")
    assert gather.params == 400 and gather.macs == 0 and gather.weight_input == 0
    assert matmul.macs == 7 * 4 * 6 and matmul.out_channels == 6 and matmul.out_channel_axis == 1


def _facts(**changes: object) -> LayerFacts:
    base = LayerFacts(
        node="n", op_type="Conv", weight="w", weight_shape=(64, 32, 3, 3), params=64 * 32 * 9, bias="b",
        bias_params=64, macs=1_000_000, out_channels=64, out_channel_axis=0,
        input_shape=(1, 32, 8, 8), output_shape=(1, 64, 8, 8),
    )
    return dataclasses.replace(base, **changes)


def test_bops_are_macs_times_weight_and_activation_bits() -> None:
    facts = _facts()
    assert layer_cost(facts, LayerChoice(4, 8), "bops") == 1_000_000 * 4 * 8
    assert layer_cost(facts, FLOAT_CHOICE, "bops") == 1_000_000 * 32 * 32


def test_weight_memory_counts_weights_at_their_bits_and_bias_at_32() -> None:
    facts = _facts()
    assert layer_cost(facts, LayerChoice(4, 8), "weight_memory") == 64 * 32 * 9 * 4 + 64 * 32


def test_density_pays_only_where_the_target_uses_zeros() -> None:
    facts, half = _facts(), LayerChoice(8, 8, density=0.5)
    assert layer_cost(facts, half, "macs", load_target("vbit")) == 500_000  # zero-skipping
    assert layer_cost(facts, half, "macs", load_target("cpu")) == 1_000_000  # dense kernels
    assert layer_cost(facts, half, "weight_memory", load_target("cpu")) == 64 * 32 * 9 * 8 * 0.5 + 64 * 32


def test_n_m_pattern_pays_on_gpu_only_when_named() -> None:
    facts, gpu = _facts(), load_target("gpu")
    assert layer_cost(facts, LayerChoice(density=0.5, n_m=(2, 4)), "macs", gpu) == 500_000
    assert layer_cost(facts, LayerChoice(density=0.5), "macs", gpu) == 1_000_000


def test_channel_keep_rounds_up_to_the_target_multiple() -> None:
    facts = _facts()
    assert kept_channels(facts, 0.3, 1) == 20 and kept_channels(facts, 0.3, 16) == 32
    assert layer_cost(facts, LayerChoice(channel_keep=0.3), "macs", load_target("cpu")) == 1_000_000 * 32 / 64


def test_model_cost_sums_layers_and_defaults_missing_ones_to_float() -> None:
    facts = layer_facts(_conv_gemm_model())
    macs = sum(f.macs for f in facts.values())
    assert model_cost(facts, {}, "macs") == macs
    mixed = model_cost(facts, {"Conv#0": LayerChoice(4, 4)}, "bops")
    assert mixed == facts["Conv#0"].macs * 16 + facts["Gemm#3"].macs * 32 * 32


def test_model_cost_refuses_unknown_layers_and_cost_models() -> None:
    facts = layer_facts(_conv_gemm_model())
    with pytest.raises(ValueError, match="not in the facts"):
        model_cost(facts, {"nope": FLOAT_CHOICE}, "macs")
    with pytest.raises(ValueError, match="unknown cost model"):
        layer_cost(facts["Conv#0"], FLOAT_CHOICE, "latency")


@pytest.mark.parametrize(
    "kwargs",
    [{"weight_bits": 0}, {"activation_bits": 33}, {"density": 0.0}, {"channel_keep": 1.5}, {"density": 0.4, "n_m": (2, 4)}],
)
def test_layer_choice_refuses_out_of_range_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="LayerChoice"):
        LayerChoice(**kwargs)  # type: ignore[arg-type]
