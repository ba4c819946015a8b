"""Per-layer settings → pipeline text: weight and activation widths, the vbit target's passes, predicted w<b>a<a> noise."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from onnxpq.analysis.cost_models import layer_facts
from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import parse_pipeline
from onnxpq.errors import PipelineError
from onnxpq.search.configuration import LayerSetting, TargetPasses
from onnxpq.search.sensitivity import LayerSpace, Sensitivity, SensitivityEntry
from onnxpq.targets.profile import load_target

LAYERS = ["conv1", "conv2", "fc"]


@pytest.mark.parametrize(("quant", "weight", "activation"), [
    (None, None, None), ("int8", 8, 8), ("w4", 4, None), ("w4a8", 4, 8), ("w2a6", 2, 6), ("a4", None, 4),
])
def test_layer_setting_reads_weight_and_activation_bits(quant: str | None, weight: int | None, activation: int | None) -> None:
    setting = LayerSetting(quant=quant)
    assert (setting.weight_bits, setting.activation_bits) == (weight, activation)
    assert setting.label() == (quant or "float")


def test_label_joins_every_axis() -> None:
    assert LayerSetting(quant="w3a4", sparsity=0.5, prune_ratio=0.25).label() == "w3a4+s50%+prune25%"


@pytest.mark.parametrize("quant", ["w9", "w4a1", "a", "int4", "w4a8b", "4"])
def test_unknown_quantization_raises_pipeline_error(quant: str) -> None:
    with pytest.raises(PipelineError, match="none of int8, w<b>, w<b>a<a>, a<a>"):
        LayerSetting(quant=quant)


def test_vbit_offers_its_activation_widths_and_w4a8_as_reference() -> None:
    passes = TargetPasses(load_target("vbit"), LAYERS)
    assert passes.activation_choices() == ["a4", "a6", "a8"]
    assert passes.reference_quant() == "w4a8"
    assert not passes.others  # quantize-activations is a planned quantizer, not an "other" pass


def test_targets_without_quantize_activations_offer_no_activation_widths() -> None:
    cpu = TargetPasses(load_target("cpu"), LAYERS)
    assert cpu.activation_choices() == [] and cpu.reference_quant() == "int8"


def test_activations_are_quantized_before_weights_with_per_node_widths() -> None:
    passes = TargetPasses(load_target("vbit"), LAYERS)
    text = passes.lossy_text({
        "conv1": LayerSetting(quant="w4a8"),
        "conv2": LayerSetting(quant="w3a4", sparsity=0.5),
        "fc": LayerSetting(quant="w4a8"),
    })
    assert text == (
        "prune-magnitude{sparsity=0.0,per_node=[conv2:0.5]},"
        "quantize-activations{bits_per_node=[conv2:4]},"
        "quantize-weights{bits=4,method=gptq,bits_per_node=[conv2:3]}"
    )


def test_weight_only_and_float_layers_are_excluded_from_quantize_activations() -> None:
    passes = TargetPasses(load_target("vbit"), LAYERS)
    text = passes.lossy_text({"conv1": LayerSetting(quant="w4"), "conv2": LayerSetting(quant="w4a6")})
    activations, weights = parse_pipeline(text)
    assert activations.name == "quantize-activations" and activations.bits == 6
    assert activations.exclude_nodes == ("conv1", "fc")
    assert weights.exclude_nodes == ("fc",)


def test_activation_only_setting_quantizes_no_weights() -> None:
    passes = TargetPasses(load_target("vbit"), LAYERS)
    assert passes.lossy_text({"fc": LayerSetting(quant="a4")}) == "quantize-activations{bits=4,exclude_nodes=[conv1,conv2]}"


def test_weight_only_configurations_keep_their_pipeline_text() -> None:
    passes = TargetPasses(load_target("vbit"), LAYERS)
    assert passes.lossy_text({"conv1": LayerSetting(quant="w2"), "fc": LayerSetting(quant="w8")}) == (
        "quantize-weights{bits=2,method=gptq,bits_per_node=[fc:8],exclude_nodes=[conv2]}"
    )


def test_sensitivity_offers_every_weight_width_with_every_activation_width_at_the_summed_noise() -> None:
    entries = [
        SensitivityEntry("fc", "quant", LayerSetting(quant="w2"), 1e-2),
        SensitivityEntry("fc", "quant", LayerSetting(quant="w8"), 1e-5),
        SensitivityEntry("fc", "activation", LayerSetting(quant="a4"), 1e-3),
        SensitivityEntry("fc", "activation", LayerSetting(quant="a8"), 1e-6),
        SensitivityEntry("fc", "sparsity", LayerSetting(sparsity=0.5), 1e-1),
    ]
    sensitivity = Sensitivity({"fc": entries})
    offered = {e.setting.quant: e for e in sensitivity.of("fc", "quant")}
    assert set(offered) == {"w2", "w8", "w2a4", "w2a8", "w8a4", "w8a8"}
    assert offered["w8a4"].noise == pytest.approx(1e-5 + 1e-3) and not offered["w8a4"].measured
    assert offered["w2"].measured
    assert [e.setting.quant for e in sensitivity.of("fc", "activation")] == ["a4", "a8"]
    assert len(sensitivity.to_dict()["fc"]) == 5  # only what was measured


def _concat_model() -> ir.Model:
    """Two convs concatenated on the channel axis (sections of 8 and 4 channels), then a consumer conv."""
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    concat (float[1, 3, 5, 5] x) => (float[1, 2, 5, 5] y) {
        p = Conv (x, Wp)
        q = Conv (x, Wq)
        cat = Concat <axis = 1> (p, q)
        y = Conv (cat, Wc)
    }""")
    rng = np.random.default_rng(0)
    for node in proto.graph.node:
        node.name = node.output[0]
    for name, shape in {"Wp": (8, 3, 1, 1), "Wq": (4, 3, 1, 1), "Wc": (2, 12, 1, 1)}.items():
        proto.graph.initializer.append(numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name))
    return ir.from_proto(proto)


def _kept_channels(model: ir.Model, pipeline: str) -> dict[str, int]:
    with PassContext():
        result = PassManager(parse_pipeline(pipeline), progress=False)(model)
    return {n.name: n.inputs[1].const_value.shape[0] for n in result.model.graph if n.op_type == "Conv"}


def test_an_owner_prune_ratio_prunes_every_section_of_its_concat_group_like_a_uniform_ratio() -> None:
    model = _concat_model()
    space = LayerSpace.build(model, layer_facts(model))
    assert space.owner_producers == {"p": ("p", "q")}  # one group: both convs feed its channels
    config = {"p": LayerSetting(prune_ratio=0.5)}

    text = TargetPasses(load_target("cpu"), space.layers, group_producers=space.owner_producers).lossy_text(config)
    assert text.startswith("prune-channels{ratio=0.0,per_node=[p:0.5,q:0.5]")
    uniform = _kept_channels(model, "prune-channels{ratio=0.5,reconstruct=off}")
    planned = _kept_channels(model, text.replace("ratio=0.0,", "ratio=0.0,reconstruct=off,"))
    assert planned == uniform == {"p": 4, "q": 2, "y": 2}

    owner_only = TargetPasses(load_target("cpu"), space.layers).lossy_text(config)  # without the group: one section
    assert _kept_channels(model, owner_only.replace("ratio=0.0,", "ratio=0.0,reconstruct=off,"))["q"] == 4
