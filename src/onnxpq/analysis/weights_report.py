"""``analyze``: per-layer pruning-versus-quantization report of a model's weights.

For every layer weight (Conv, ConvTranspose, Gemm, MatMul with a constant
weight, Gather tables; see :func:`onnxpq.analysis.cost_models.layer_facts`)
the weight is read alone, compared by :func:`onnxpq.analysis.weight_compression.compare_tensor`
(b-bit symmetric quantization with MSE-optimal clipping against magnitude
pruning at sparsity 1 − b/16 and 1 − b/F, F the model's float width), and
released before the next one is read: at most one weight tensor is in memory,
so models with multi-GiB external data analyse in the memory of their largest
tensor (plus its float64 working copies).

JSON (``schema: "onnxpq.analyze/1"``; fields are added, never renamed)::

    schema, model, granularity, bits, pairings {fp16, own}, reference,
    layers[]: node, nodes, op_type, weight, shape, params, float_type, float_bits,
              quantization_axis, excess_kurtosis,
              compression[]: bits, quantize_sqnr_db,
                             prune_fp16 {sparsity, sqnr_db}, prune_own {sparsity, sqnr_db},
                             winner_fp16, winner_own
              pruning_wins_fp16, pruning_wins_own, verdict
    skipped[]: weight, nodes, reason
    summary: tensors, params, pruning_wins_fp16 {bits: count}, pruning_wins_own {bits: count},
             pruning_wins_params_fp16 {bits: params}, text
    environment

``sqnr_db`` is ``null`` when the compressed tensor is exact (no error).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxpq.analysis.cost_models import LayerFacts, layer_facts
from onnxpq.analysis.weight_compression import DEFAULT_BITS, TensorCompression, compare_tensor
from onnxpq.errors import OnnxpqError

__all__ = ["SCHEMA", "GRANULARITIES", "AnalyzedWeight", "WeightAnalysis", "analyze", "bit_ranges"]

logger = logging.getLogger(__name__)

SCHEMA = "onnxpq.analyze/1"
GRANULARITIES = ("per-tensor", "per-channel")
_REFERENCE = "Kuzmin et al., 'Pruning vs Quantization: Which is Better?', NeurIPS 2023"


def bit_ranges(bits: Sequence[int]) -> str:
    """Compact text of a set of bit widths: (2, 3, 4, 7) -> '2-4, 7'."""
    ordered = sorted(set(bits))
    parts: list[str] = []
    start = prev = None
    for b in [*ordered, None]:
        if start is not None and (b is None or b != prev + 1):  # type: ignore[operator]
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if b is not None and start is None:
            start = b
        prev = b
    return ", ".join(parts)


@dataclass(frozen=True)
class AnalyzedWeight:
    """One weight tensor: where it is used and how it compresses."""

    facts: LayerFacts
    nodes: tuple[str, ...]
    quantization_axis: int | None
    result: TensorCompression

    def short_verdict(self) -> str:
        """The FP16-pairing verdict in a few words, for a table cell."""
        prune = self.result.pruning_wins("fp16")
        if not prune:
            return "quantize"
        if len(prune) == len(self.result.comparisons):
            return "prune"
        return f"prune at {bit_ranges(prune)} bits"

    def verdict(self) -> str:
        """The comparison in words (FP16 pairing; the own-width pairing when it differs)."""
        bits = [c.bits for c in self.result.comparisons]
        prune = self.result.pruning_wins("fp16")
        if not prune:
            text = f"quantize at every width ({bit_ranges(bits)} bits)"
        elif len(prune) == len(bits):
            text = f"prune at every width ({bit_ranges(bits)} bits)"
        else:
            rest = [b for b in bits if b not in prune]
            text = f"prune at {bit_ranges(prune)} bits, quantize at {bit_ranges(rest)}"
        own = self.result.pruning_wins("own")
        if self.result.float_bits != 16:
            text += f"; vs float{self.result.float_bits}: " + (
                f"prune at {bit_ranges(own)} bits" if own else "quantize"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        f = self.facts
        return {
            "node": f.node,
            "nodes": list(self.nodes),
            "op_type": f.op_type,
            "weight": f.weight,
            "shape": list(f.weight_shape),
            "params": f.params,
            "float_type": f.float_type,
            "float_bits": self.result.float_bits,
            "quantization_axis": self.quantization_axis,
            "excess_kurtosis": self.result.excess_kurtosis,
            "compression": [
                {
                    "bits": c.bits,
                    "quantize_sqnr_db": c.quantize_sqnr_db,
                    "prune_fp16": {"sparsity": c.prune_sparsity_fp16, "sqnr_db": c.prune_sqnr_db_fp16},
                    "prune_own": {"sparsity": c.prune_sparsity_own, "sqnr_db": c.prune_sqnr_db_own},
                    "winner_fp16": c.winner_fp16,
                    "winner_own": c.winner_own,
                }
                for c in self.result.comparisons
            ],
            "pruning_wins_fp16": list(self.result.pruning_wins("fp16")),
            "pruning_wins_own": list(self.result.pruning_wins("own")),
            "verdict": self.verdict(),
        }


@dataclass(frozen=True)
class WeightAnalysis:
    """The analysis of every layer weight of one model."""

    model: str
    granularity: str
    bits: tuple[int, ...]
    weights: tuple[AnalyzedWeight, ...]
    skipped: tuple[tuple[str, tuple[str, ...], str], ...] = field(default=())

    def pruning_wins(self, reference: str = "fp16") -> dict[int, list[AnalyzedWeight]]:
        """Per bit width, the weights where pruning beats quantization."""
        return {b: [w for w in self.weights if b in w.result.pruning_wins(reference)] for b in self.bits}

    def summary(self) -> str:
        """One or two sentences: where pruning wins, if anywhere."""
        count = len(self.weights)
        if count == 0:
            return "No float layer weights to analyse."
        parts = []
        for reference, label in (("fp16", "against FP16 (sparsity 1 - b/16)"), ("own", "against the model's own float width (1 - b/F)")):
            wins = {b: ws for b, ws in self.pruning_wins(reference).items() if ws}
            if not wins:
                parts.append(f"{label}, quantization wins for all {count} tensors at every width ({bit_ranges(self.bits)} bits)")
            else:
                detail = ", ".join(f"{len(ws)} at {b} bits" for b, ws in sorted(wins.items()))
                parts.append(f"{label}, pruning wins for {detail} (of {count} tensors), quantization for the rest")
        text = "; ".join(parts) + "."
        return text[0].upper() + text[1:]

    def to_dict(self) -> dict[str, Any]:
        from onnxpq.report.schema import environment

        return {
            "schema": SCHEMA,
            "model": self.model,
            "granularity": self.granularity,
            "bits": list(self.bits),
            "pairings": {
                "fp16": "prune to sparsity 1 - b/16 (FP16 reference, as in the paper)",
                "own": "prune to sparsity 1 - b/F, F = the tensor's own float width",
            },
            "reference": _REFERENCE,
            "layers": [w.to_dict() for w in self.weights],
            "skipped": [{"weight": name, "nodes": list(nodes), "reason": reason} for name, nodes, reason in self.skipped],
            "summary": {
                "tensors": len(self.weights),
                "params": sum(w.facts.params for w in self.weights),
                "pruning_wins_fp16": {str(b): len(ws) for b, ws in self.pruning_wins("fp16").items()},
                "pruning_wins_own": {str(b): len(ws) for b, ws in self.pruning_wins("own").items()},
                "pruning_wins_params_fp16": {
                    str(b): sum(w.facts.params for w in ws) for b, ws in self.pruning_wins("fp16").items()
                },
                "text": self.summary(),
            },
            "environment": environment(),
        }


def _quantization_axis(facts: LayerFacts, granularity: str) -> int | None:
    """Per-channel axis: output channels, or rows of a Gather table (as quantize-gather does)."""
    if granularity == "per-tensor":
        return None
    return 0 if facts.op_type == "Gather" else facts.out_channel_axis


def _release(tensor: object) -> None:
    if isinstance(tensor, ir.ExternalTensor):
        try:
            tensor.release()
        except BufferError:
            logger.debug("memory map of %r still in use", tensor.name)


def _check_options(granularity: str, bits: Sequence[int]) -> tuple[int, ...]:
    if granularity not in GRANULARITIES:
        raise OnnxpqError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    checked = tuple(sorted(set(bits)))
    if not checked or not all(isinstance(b, int) and not isinstance(b, bool) and 2 <= b <= 16 for b in checked):
        raise OnnxpqError(f"bits must be integers in 2..16, got {list(bits)}")
    return checked


def analyze(
    model: str | os.PathLike[str] | ir.Model,
    *,
    granularity: str = "per-tensor",
    bits: Sequence[int] = DEFAULT_BITS,
    json_path: str | os.PathLike[str] | None = None,
) -> WeightAnalysis:
    """Compare pruning and quantization of every layer weight of ``model`` at equal compression.

    Args:
        model: A path (loaded safely with :func:`onnxpq.io.load_model`) or an ``onnx_ir.Model``.
        granularity: ``"per-tensor"`` or ``"per-channel"`` quantization (pruning is per tensor).
        bits: Bit widths to compare (2..16; at most the tensor's float width).
        json_path: Write the JSON (``onnxpq.analyze/1``) here, atomically.

    Raises:
        ModelLoadError, UnsafeModelError: the model cannot be loaded safely.
        OnnxpqError: bad options.
        OutputError: the JSON cannot be written (or would overwrite the model).
    """
    from onnxpq.io import load_model, write_text_atomic

    checked_bits = _check_options(granularity, bits)
    if isinstance(model, ir.Model):
        loaded, source = model, "<in-memory model>"
    else:
        loaded, source = load_model(model), str(model)
    facts = layer_facts(loaded)
    users: dict[str, list[str]] = {}
    first: dict[str, LayerFacts] = {}
    for layer in facts.values():
        users.setdefault(layer.weight, []).append(layer.node)
        first.setdefault(layer.weight, layer)
    analysed: list[AnalyzedWeight] = []
    skipped: list[tuple[str, tuple[str, ...], str]] = []
    for name, layer in first.items():
        nodes = tuple(users[name])
        value = loaded.graph.initializers.get(name)
        tensor = value.const_value if value is not None else None
        if tensor is None:
            skipped.append((name, nodes, "no constant value"))
            continue
        if not tensor.dtype.is_floating_point():
            skipped.append((name, nodes, f"already quantized ({tensor.dtype.name})"))
            continue
        usable = [b for b in checked_bits if b <= tensor.dtype.bitwidth]
        if not usable:
            skipped.append((name, nodes, f"no compared width below its {tensor.dtype.bitwidth} bits"))
            continue
        try:
            array = tensor.numpy()
            axis = _quantization_axis(layer, granularity)
            result = compare_tensor(array, usable, axis=axis, float_bits=tensor.dtype.bitwidth)
        except ValueError as error:
            skipped.append((name, nodes, str(error)))
            continue
        finally:
            array = None  # drop the view before the memory map is released
            _release(tensor)
        logger.debug("analysed %s (%d params)", name, layer.params)
        analysed.append(AnalyzedWeight(layer, nodes, axis, result))
    analysis = WeightAnalysis(source, granularity, checked_bits, tuple(analysed), tuple(skipped))
    if json_path is not None:
        text = _json_text(analysis.to_dict())
        protect = () if isinstance(model, ir.Model) else (model,)
        write_text_atomic(json_path, text, protect=protect)
    return analysis


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _json_text(data: dict[str, Any]) -> str:
    import json

    return json.dumps(_json_ready(data), indent=2, allow_nan=False) + "\n"
