"""A real report, built once per model name by running ``onnxpq.workflows.optimize`` on a tiny model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import pytest

#: The exact cleanup pipeline: the report tests need outputs equal to the input's.
CLEANUP_PIPELINE = "constants-to-initializers,eliminate-identity,fold-batchnorm,eliminate-dead"

from onnxpq.workflows import OptimizeResult, optimize

_HEADER = '<ir_version: 10, opset_import: ["" : 21]>\n'


@dataclass
class BuiltReport:
    """An optimize run: its result and the files it read and wrote."""

    result: OptimizeResult
    model: Path
    output: Path
    json_path: Path
    html_path: Path

    @property
    def report(self) -> dict:
        return self.result.report


def _write_tiny_classifier(path: Path) -> None:
    """y = Identity(x) @ w + b, [batch, 4] -> [batch, 3]; eliminate-identity has work to do."""
    proto = onnx.parser.parse_model(
        f"{_HEADER}g (float[batch,4] x) => (float[batch,3] y) {{ i = Identity(x)\n m = MatMul(i, w)\n y = Add(m, b) }}"
    )
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
            onnx.numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b"),
        ]
    )
    onnx.save(proto, str(path))


def _write_labelled_data(model: Path, path: Path) -> None:
    """24 samples, labelled with the reference model's own argmax (baseline accuracy 1.0)."""
    x = np.random.default_rng(1).standard_normal((24, 4)).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    labels = np.argmax(session.run(None, {"x": x})[0], axis=-1).astype(np.int64)
    np.savez(path, x=x, labels=labels)


@pytest.fixture(scope="session")
def build_report(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], BuiltReport]:
    """``build_report(model_file_name)``: optimize a tiny model saved under that name (cached per name)."""
    cache: dict[str, BuiltReport] = {}

    def build(model_name: str = "model.onnx") -> BuiltReport:
        if model_name not in cache:
            folder = tmp_path_factory.mktemp("report")
            model = folder / model_name
            _write_tiny_classifier(model)
            data = folder / "data.npz"
            _write_labelled_data(model, data)
            built = BuiltReport(
                result=None,  # type: ignore[arg-type]
                model=model,
                output=folder / "optimized.onnx",
                json_path=folder / "report.json",
                html_path=folder / "report.html",
            )
            built.result = optimize(
                model,
                built.output,
                target="cpu",
                pipeline=CLEANUP_PIPELINE,
                data=data,
                report=built.json_path,
                html=built.html_path,
                latency_runs=3,
                progress=False,
            )
            cache[model_name] = built
        return cache[model_name]

    return build
