"""The JSON report (``schema: "onnxpq.report/1"``).

Field names are part of the public interface: add, don't rename. ``layers``
(one row per compute layer: shapes, params, MACs, precision, sparsity,
channels kept, output error) and ``layer_error`` are documented in
:mod:`onnxpq.report.layers`. Every
figure says where it comes from: ``latency_ms.method`` names the measurement
or the cost model behind an estimate, and ``cost_models`` lists the models
used for each figure.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxpq.core.instruments import PassRecord
from onnxpq.report.layers import LayerTable
from onnxpq.targets.profile import Target
from onnxpq.validation.data import Dataset
from onnxpq.validation.figures import PairFigures

__all__ = ["SCHEMA", "build_report", "report_json", "environment"]

SCHEMA = "onnxpq.report/1"


def environment() -> dict[str, Any]:
    """Versions and machine, so that every figure can be reproduced."""
    from onnxpq import __version__

    return {
        "onnxpq": __version__,
        "onnx": onnx.__version__,
        "onnx_ir": ir.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
    }


def _ratio(new: float | None, old: float | None) -> float | None:
    if new is None or not old:
        return None
    return new / old


def build_report(
    *,
    command: str,
    input_path: str,
    output_path: str | None,
    target: Target,
    pipeline: str,
    pipeline_full: str,
    records: Sequence[PassRecord],
    figures: PairFigures,
    dataset: Dataset,
    gate: dict[str, Any],
    layers: LayerTable | None = None,
) -> dict[str, Any]:
    """Assemble the report dictionary.

    ``layers`` (:mod:`onnxpq.report.layers`) fills the fields ``layers`` (one row per
    compute layer) and ``layer_error`` (how the per-layer error was measured, or why not).
    """
    base, opt = figures.baseline, figures.optimized
    return {
        "schema": SCHEMA,
        "command": command,
        "input": input_path,
        "output": output_path,
        "target": {
            "name": target.name,
            "description": target.description,
            "providers": list(target.providers),
            "source": target.source,
            "cost_model": target.cost.model,
        },
        "pipeline": pipeline,
        "pipeline_full": pipeline_full,
        "data": {
            "source": dataset.source,
            "samples": dataset.samples,
            "labels": dataset.labels is not None,
        },
        "baseline": base.to_dict(),
        "optimized": opt.to_dict(),
        "ratios": {
            "size": _ratio(opt.size_bytes, base.size_bytes),
            "latency_p50": _ratio(opt.latency.p50, base.latency.p50),
            "macs": _ratio(opt.macs, base.macs),
            "bops": _ratio(opt.bops, base.bops),
        },
        "fidelity": figures.fidelity.to_dict(),
        "passes": [r.to_dict() for r in records],
        "layers": layers.rows if layers is not None else [],
        "layer_error": layers.info if layers is not None else {"measured": 0, "skipped": "not computed"},
        "gate": gate,
        "cost_models": {
            "latency": opt.latency.method,
            "macs": "shape analysis per sample (batch 1)",
            "bops": "sum of MACs x weight bits x activation bits x density",
            "size_bytes": "bytes on disk, .onnx plus external data",
            "layer_cost": _layer_cost_text(target.cost.model),
        },
        "environment": environment(),
    }


def _layer_cost_text(model: str) -> str:
    """What prices one layer for the planner under the target's ``[cost] model`` (analysis.cost_models)."""
    texts = {
        "measured": "measured: onnxruntime profiling of the layer alone on the target's execution provider (analysis.node_latency)",
        "bops": "bops: MACs x weight bits x activation bits x density where zeros are skipped",
        "macs": "macs: MACs x kept channels x density where zeros are skipped",
        "weight_memory": "weight_memory: parameters x weight bits (+ bias at 32 bits)",
    }
    return texts.get(model, model)


def _plain(value: Any) -> Any:
    """JSON-ready value: numpy scalars to Python, non-finite floats to None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report_json(report: dict[str, Any]) -> str:
    """JSON text of a report, sections in the order they were built."""
    return json.dumps(_plain(report), indent=2, allow_nan=False) + "\n"
