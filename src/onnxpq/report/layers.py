"""The per-layer table of a report (field ``layers``): what each compute layer became, and the error it carries.

One row per compute node of the optimized model's main graph (the nodes
:mod:`onnxpq.analysis.macs` counts: Conv, ConvTranspose, Gemm, MatMul, their
integer and QLinear forms, DynamicQuantizeMatMul, MatMulNBits), in graph
order. Read from the optimized graph itself, not from the pipeline text:

``name``, ``op_type``, ``inputs`` / ``outputs``
    node name, operator, and ``{"name", "shape"}`` of every input and output
    (shapes from onnx shape inference on a clone; symbolic dims by name,
    unknown dims as null);
``params``, ``macs`` and ``params_before``, ``macs_before``
    weight and bias elements, and MACs per sample, in the optimized model and
    in the baseline's node of the same name (null when the baseline has none);
``weight``
    ``format`` (``qdq``: a DequantizeLinear feeds the weight; ``matmul-nbits``;
    ``dynamic``: DynamicQuantizeMatMul / MatMulIntegerToFloat; ``float``),
    ``bits``, ``granularity`` (``per-tensor``, ``per-channel``, ``block-<n>``),
    ``symmetric`` (all zero points 0; null for float), ``density`` (fraction of
    non-zero weights, zero = the zero point for quantized ones);
``activation_bits``
    bits of the activation operand (32 for float, 8 for QDQ/dynamic int8);
``channels``
    ``{"out": [before, after], "in": [before, after]}``: output and input
    channels (Conv/ConvTranspose filters, Gemm/MatMul columns and rows) in
    the float reference and in the optimized model — pruned channels show here;
``error``
    how far the layer's output has drifted. With y the output of this node's
    output tensor in the float reference and ŷ in the optimized model, over
    the same samples of the validation data::

        nsr      = Σ (y − ŷ)² / Σ y²                 (noise-to-signal ratio)
        sqnr_db  = −10 · log10(nsr)                  (null with identical = true when nsr = 0)
        rel_rms  = sqrt(nsr)
        added_nsr = nsr − max(nsr of the nearest measured compute layers upstream)   (0 upstream for the first)

    ``sqnr_db`` is *accumulated* (every layer before contributes);
    ``added_nsr`` estimates the layer's own contribution (first-order: noise
    powers of independent errors add; it can be negative where a layer, e.g.
    a ReLU-clipped one, suppresses noise). ``measured: false`` with a
    ``reason`` when the layer was not compared (output shape changed by
    pruning, tensor not in the reference, over the caps below, skipped);
``harm``
    when the accuracy gate ranked the quantized nodes, that node's own output
    noise power (``gate.fallback.harm``), else absent.

The float reference is the input model after the pipeline's *exact* passes
(they keep outputs to float tolerance and leave the node and tensor names the
lossy passes then quantize or prune), so ``conv1_out`` means the same tensor
in both models even after batch-norm folding.

Cost and caps: the error needs one extra onnxruntime run per model over at
most ``max_samples`` samples, with the compared tensors as extra outputs,
``tensors_per_run`` at a time (so at most that many activations are held);
at most ``max_layers`` layers are compared and no new group starts after
``max_seconds``. ``measure_error=False`` skips it (the rest of the table is
read from the graphs and costs one shape inference and one weight scan).
Models with external data or over the in-memory limit are not compared
(the reason is recorded). The summary of how it was measured is the report
field ``layer_error``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from onnxpq.analysis.macs import ModelCost, NodeCost, model_cost
from onnxpq.analysis.model_inputs import input_specs
from onnxpq.core.manager import PassManager
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.progress import progress
from onnxpq.core.session import IN_MEMORY_LIMIT_BYTES, has_external_data, make_session, run_in_batches
from onnxpq.core.instruments import model_stats
from onnxpq.validation.data import Dataset

__all__ = ["LayerTable", "float_reference", "layer_table", "report_layers"]

logger = logging.getLogger(__name__)

_DQ = ("DequantizeLinear",)
_DYNAMIC = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat")


@dataclass
class LayerTable:
    """The rows of the ``layers`` field and how the error was measured (``layer_error``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def float_reference(model: ir.Model, passes: Sequence[OnnxpqPass]) -> ir.Model:
    """``model`` after the exact passes of ``passes`` only (no checks: they already ran on the real pipeline)."""
    exact = [p for p in passes if p.exact]
    if not exact:
        return model
    manager = PassManager(exact, verify_each=False, check_numerics=False, progress=False)
    return manager(model).model


# --------------------------------------------------------------------------- reading the graph


def _producer(value: ir.Value | None) -> ir.Node | None:
    return value.producer() if value is not None else None


def _const(value: ir.Value | None) -> ir.TensorProtocol | None:
    return value.const_value if value is not None else None


def _attr(node: ir.Node, name: str, default: int) -> int:
    attribute = node.attributes.get(name)
    return default if attribute is None else int(attribute.value)


def _shape(value: ir.Value | None) -> list[int | str | None] | None:
    if value is None or value.shape is None:
        return None
    return [d if isinstance(d, int) else (d.value if d.value is not None else None) for d in value.shape]


def _weight_value(node: ir.Node) -> ir.Value | None:
    return node.inputs[1] if len(node.inputs) > 1 else None


def _weight_facts(node: ir.Node, cost: NodeCost | None) -> dict[str, Any]:
    """format, bits, granularity, symmetric, density of the node's weight."""
    bits = cost.weight_bits if cost is not None else None
    density = cost.density if cost is not None else None
    if node.op_type == "MatMulNBits":
        return {"format": "matmul-nbits", "bits": _attr(node, "bits", 4),
                "granularity": f"block-{_attr(node, 'block_size', 32)}",
                "symmetric": len(node.inputs) < 4 or node.inputs[3] is None, "density": density}
    weight = _weight_value(node)
    dq = _producer(weight)
    if node.op_type in _DYNAMIC:
        scale = _const(node.inputs[2]) if len(node.inputs) > 2 else None
        zero = _const(node.inputs[3]) if len(node.inputs) > 3 else None
        return {"format": "dynamic", "bits": bits, "granularity": _granularity(scale, 0),
                "symmetric": _symmetric(zero), "density": density}
    if dq is not None and dq.op_type in _DQ and _const(dq.inputs[0]) is not None:
        scale = _const(dq.inputs[1]) if len(dq.inputs) > 1 else None
        zero = _const(dq.inputs[2]) if len(dq.inputs) > 2 else None
        return {"format": "qdq", "bits": bits, "granularity": _granularity(scale, _attr(dq, "block_size", 0)),
                "symmetric": _symmetric(zero), "density": density}
    tensor = _const(weight)
    if tensor is None:
        return {"format": "activation", "bits": bits, "granularity": None, "symmetric": None, "density": None}
    return {"format": "float", "bits": bits, "granularity": None, "symmetric": None, "density": density}


def _granularity(scale: ir.TensorProtocol | None, block_size: int) -> str | None:
    if scale is None:
        return None
    if block_size > 0:
        return f"block-{block_size}"
    return "per-tensor" if math.prod(scale.shape) <= 1 else "per-channel"


def _symmetric(zero: ir.TensorProtocol | None) -> bool:
    if zero is None:
        return True
    return not bool(np.any(np.asarray(zero.numpy(), dtype=np.float64)))


def _weight_dims(node: ir.Node) -> list[int] | None:
    """The logical weight shape: through a DequantizeLinear, MatMulNBits as [K, N]."""
    if node.op_type == "MatMulNBits":
        return [_attr(node, "K", 0), _attr(node, "N", 0)]
    weight = _weight_value(node)
    dq = _producer(weight)
    if dq is not None and dq.op_type in _DQ:
        weight = dq.inputs[0]
    tensor = _const(weight)
    if tensor is not None:
        return [int(d) for d in tensor.shape]
    shape = _shape(weight)
    return shape if shape is not None and all(isinstance(d, int) for d in shape) else None  # type: ignore[return-value]


def _channels(node: ir.Node) -> tuple[int | None, int | None]:
    """(out, in) channels of the node's weight."""
    dims = _weight_dims(node)
    if not dims:
        return None, None
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        group = _attr(node, "group", 1)
        return dims[0], dims[1] * group if len(dims) > 1 else None
    if op == "ConvTranspose":
        group = _attr(node, "group", 1)
        return dims[1] * group if len(dims) > 1 else None, dims[0]
    if op == "Gemm":
        if len(dims) != 2:
            return None, None
        return (dims[0], dims[1]) if _attr(node, "transB", 0) else (dims[1], dims[0])
    if len(dims) == 1:
        return None, dims[0]
    return dims[-1], dims[-2]


def _inferred(model: ir.Model) -> ir.Model:
    work = model.clone()
    try:
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(work)
    except Exception as error:  # noqa: BLE001 - shapes are best effort in a report
        logger.debug("per-layer table: shape inference failed (%s); using the shapes in the model", error)
    return work


def _per_sample_shapes(model: ir.Model, dataset: Dataset) -> tuple[dict[str, list[int]], int]:
    """Input shapes of one inference and the samples it covers (batch 1 where the batch axis is free)."""
    shapes: dict[str, list[int]] = {}
    samples = 1
    for spec in input_specs(model):
        array = dataset.inputs.get(spec.name)
        if array is None:
            continue
        rank = len(spec.shape) if spec.shape is not None else array.ndim - 1
        if array.ndim == rank + 1:
            shapes[spec.name] = list(array.shape[1:])
        else:
            batch = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) else 1
            samples = max(samples, batch)
            shapes[spec.name] = [batch, *array.shape[1:]]
    return shapes, samples


def _costs(model: ir.Model, dataset: Dataset) -> tuple[dict[str, NodeCost], int]:
    shapes, samples = _per_sample_shapes(model, dataset)
    try:
        cost: ModelCost = model_cost(model, shapes, count_zeros=True)
    except Exception as error:  # noqa: BLE001 - a report still shows the rest
        logger.warning("per-layer table: cost analysis failed (%s)", error)
        return {}, samples
    return {c.node: c for c in cost.nodes}, samples


# --------------------------------------------------------------------------- error measurement


def _upstream_layers(graph: ir.Graph, layer_names: set[str]) -> dict[str, set[str]]:
    """For each layer, the nearest compute layers its inputs come from (through any non-layer nodes)."""
    nearest: dict[str, set[str]] = {}
    reach: dict[int, set[str]] = {}  # id(node) -> nearest layers reaching its outputs (the node itself if a layer)
    for node in graph:
        found: set[str] = set()
        for value in node.inputs:
            producer = _producer(value)
            if producer is not None and producer.graph is graph:
                found |= reach.get(id(producer), set())
        if node.name in layer_names:
            nearest[node.name] = found
            reach[id(node)] = {node.name}
        else:
            reach[id(node)] = found
    return nearest


def _not_comparable(model: ir.Model) -> str | None:
    if has_external_data(model):
        return "the model has external data (too large to compare in memory)"
    if model_stats(model)[2] > IN_MEMORY_LIMIT_BYTES:
        return f"the model is over {IN_MEMORY_LIMIT_BYTES >> 20} MiB"
    return None


def _with_outputs(model: ir.Model, names: Sequence[str]) -> ir.Model:
    clone = model.clone()
    values: dict[str, ir.Value] = {}
    for node in clone.graph:
        for value in node.outputs:
            if value.name:
                values[value.name] = value
    existing = {v.name for v in clone.graph.outputs}
    for name in names:
        if name not in existing:
            clone.graph.outputs.append(values[name])
    return clone


def _run_capture(model: ir.Model, names: Sequence[str], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    captured = _with_outputs(model, names)
    session = make_session(captured)
    outputs = run_in_batches(session, inputs)
    by_name = {o.name: i for i, o in enumerate(session.get_outputs())}
    return {name: outputs[by_name[name]] for name in names}


def _nsr(reference: np.ndarray, candidate: np.ndarray) -> float:
    r = reference.astype(np.float64)
    c = candidate.astype(np.float64)
    finite = np.isfinite(r) & np.isfinite(c)
    if not np.array_equal(np.isfinite(r), np.isfinite(c)):
        return math.inf
    noise = float(np.sum((r[finite] - c[finite]) ** 2))
    signal = float(np.sum(r[finite] ** 2))
    if noise == 0.0:
        return 0.0
    return noise / signal if signal > 0 else math.inf


def _measure(
    reference: ir.Model,
    optimized: ir.Model,
    pairs: list[tuple[str, str]],
    dataset: Dataset,
    *,
    max_samples: int,
    tensors_per_run: int,
    max_seconds: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """NSR of every (layer, tensor) pair; and how it was measured."""
    inputs = dataset.head(max_samples).inputs
    start = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    groups = [pairs[i : i + tensors_per_run] for i in range(0, len(pairs), tensors_per_run)]
    stopped = 0
    with progress("per-layer error", total=len(groups)) as bar:
        for index, group in enumerate(groups):
            if index and time.perf_counter() - start > max_seconds:
                stopped = len(groups) - index
                for layer, _ in (p for g in groups[index:] for p in g):
                    results[layer] = {"measured": False, "reason": f"time budget of {max_seconds:g} s spent"}
                break
            names = [tensor for _, tensor in group]
            ref = _run_capture(reference, names, inputs)
            opt = _run_capture(optimized, names, inputs)
            for layer, tensor in group:
                a, b = ref[tensor], opt[tensor]
                if a.shape != b.shape:
                    results[layer] = {"measured": False, "reason": f"output shape changed {list(a.shape)} -> {list(b.shape)}"}
                elif not np.issubdtype(a.dtype, np.floating):
                    results[layer] = {"measured": False, "reason": f"output is {a.dtype}, not floating point"}
                else:
                    results[layer] = {"measured": True, "tensor": tensor, "nsr": _nsr(a, b)}
            del ref, opt
            bar.advance()
    info = {"samples": len(next(iter(inputs.values()))) if inputs else 0, "seconds": time.perf_counter() - start,
            "groups_skipped_for_time": stopped}
    return results, info


def _error_entry(result: dict[str, Any], upstream_nsr: float) -> dict[str, Any]:
    if not result.get("measured"):
        return {"measured": False, "reason": result.get("reason")}
    nsr = result["nsr"]
    identical = nsr == 0.0
    sqnr = None if identical or math.isinf(nsr) else -10.0 * math.log10(nsr)
    if math.isinf(nsr):
        sqnr = None
    return {
        "measured": True,
        "tensor": result["tensor"],
        "sqnr_db": sqnr,
        "identical": identical,
        "nsr": nsr if math.isfinite(nsr) else None,
        "rel_rms": math.sqrt(nsr) if math.isfinite(nsr) else None,
        "added_nsr": nsr - upstream_nsr if math.isfinite(nsr) and math.isfinite(upstream_nsr) else None,
        "non_finite": math.isinf(nsr),
    }


# --------------------------------------------------------------------------- the table


def layer_table(
    reference: ir.Model,
    optimized: ir.Model,
    dataset: Dataset,
    *,
    baseline: ir.Model | None = None,
    harm: Mapping[str, float] | None = None,
    measure_error: bool = True,
    max_samples: int = 32,
    max_layers: int = 512,
    tensors_per_run: int = 64,
    max_seconds: float = 60.0,
) -> LayerTable:
    """The per-layer rows of ``optimized`` against its float ``reference`` (see the module docstring).

    Args:
        reference: the float model with the optimized model's names (:func:`float_reference`).
        optimized: the optimized model.
        dataset: validation data; the first ``max_samples`` samples are compared.
        baseline: the input model, for ``params_before`` / ``macs_before`` (default: ``reference``).
        harm: per-node harm from the accuracy gate's ranking, if it ran.
        measure_error: False skips the onnxruntime comparison.
    """
    start = time.perf_counter()
    opt_costs, per_run = _costs(optimized, dataset)
    base_costs, base_per_run = _costs(baseline if baseline is not None else reference, dataset)
    shaped = _inferred(optimized)
    ref_nodes = {node.name: node for node in reference.graph if node.name}
    layers = [node for node in shaped.graph if node.name in opt_costs]
    rows: list[dict[str, Any]] = []
    for node in layers:
        cost = opt_costs[node.name]
        before = base_costs.get(node.name)
        ref_node = ref_nodes.get(node.name)
        out_after, in_after = _channels(node)
        out_before, in_before = _channels(ref_node) if ref_node is not None else (None, None)
        row: dict[str, Any] = {
            "name": node.name,
            "op_type": node.op_type,
            "domain": node.domain or "",
            "inputs": [{"name": v.name if v is not None else None, "shape": _shape(v)} for v in node.inputs],
            "outputs": [{"name": v.name, "shape": _shape(v)} for v in node.outputs],
            "params": cost.weight_params,
            "macs": cost.macs // per_run,
            "params_before": before.weight_params if before is not None else None,
            "macs_before": before.macs // base_per_run if before is not None else None,
            "weight": _weight_facts(node, cost),
            "activation_bits": cost.activation_bits,
            "channels": {"out": [out_before, out_after], "in": [in_before, in_after]},
            "error": {"measured": False, "reason": "not measured"},
        }
        if harm and node.name in harm:
            row["harm"] = harm[node.name]
        rows.append(row)
    info: dict[str, Any] = {
        "method": "output of each layer in the optimized model vs the float reference (the input after the "
        "pipeline's exact passes), onnxruntime CPU; sqnr_db accumulated, added_nsr = nsr - max upstream nsr",
        "measured": 0,
        "skipped": None,
    }
    reason = None if measure_error else "skipped on request"
    if reason is None:
        reason = _not_comparable(optimized) or _not_comparable(reference)
    if reason is None:
        ref_values = {v.name for node in reference.graph for v in node.outputs if v.name}
        pairs: list[tuple[str, str]] = []
        for row in rows:
            tensor = row["outputs"][0]["name"] if row["outputs"] else None
            if tensor is None or tensor not in ref_values:
                row["error"] = {"measured": False, "reason": "output tensor not in the float reference"}
            elif len(pairs) >= max_layers:
                row["error"] = {"measured": False, "reason": f"over max_layers={max_layers}"}
            else:
                pairs.append((row["name"], tensor))
        try:
            results, measured_info = _measure(
                reference, optimized, pairs, dataset,
                max_samples=max_samples, tensors_per_run=tensors_per_run, max_seconds=max_seconds,
            )
        except Exception as error:  # noqa: BLE001 - a report without per-layer error beats no report
            logger.warning("per-layer error not measured: %s", str(error).strip().splitlines()[0] if str(error).strip() else error)
            reason = f"onnxruntime failed: {type(error).__name__}"
        else:
            info.update(measured_info)
            upstream = _upstream_layers(optimized.graph, {r["name"] for r in rows})
            nsr = {name: r["nsr"] for name, r in results.items() if r.get("measured")}
            for row in rows:
                result = results.get(row["name"])
                if result is None:
                    continue
                ups = [nsr[u] for u in upstream.get(row["name"], ()) if u in nsr]
                row["error"] = _error_entry(result, max(ups, default=0.0))
            info["measured"] = sum(1 for r in rows if r["error"]["measured"])
    if reason is not None:
        info["skipped"] = reason
        for row in rows:
            row["error"] = {"measured": False, "reason": reason}
    info["seconds_total"] = time.perf_counter() - start
    logger.info("per-layer table: %d layer(s), %d compared, %.2f s", len(rows), info["measured"], info["seconds_total"])
    return LayerTable(rows, info)


def report_layers(
    model: ir.Model,
    optimized: ir.Model,
    passes: Sequence[OnnxpqPass],
    dataset: Dataset,
    *,
    harm: Mapping[str, float] | None = None,
    measure_error: bool = True,
) -> LayerTable:
    """The ``layers`` table of an optimize or validate run; never raises (a failure is logged and recorded).

    ``model`` is the input (baseline), ``passes`` the pipeline that produced ``optimized``
    (empty for validate: the reference is then ``model`` itself).
    """
    try:
        reference = float_reference(model, passes) if measure_error else model
        return layer_table(reference, optimized, dataset, baseline=model, harm=harm, measure_error=measure_error)
    except Exception as error:  # noqa: BLE001 - the per-layer table must never cost the user the report
        logger.warning("per-layer table not computed: %s: %s", type(error).__name__, error)
        logger.debug("per-layer table failure", exc_info=error)
        return LayerTable([], {"measured": 0, "skipped": f"failed: {type(error).__name__}: {error}"})
