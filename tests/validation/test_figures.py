"""Tests for onnxpq.validation.figures: before/after figures of two tiny models measured in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import pytest

from onnxpq.targets.profile import load_target
from onnxpq.validation.data import Dataset
from onnxpq.validation.figures import PairFigures, measure_pair

_HEADER = '<ir_version: 10, opset_import: ["" : 21]>\n'

# y = x @ w with w [4, 3]: 4 * 3 = 12 MACs per sample; float32 operands: 12 * 32 * 32 bit-operations.
MACS = 4 * 3
BOPS = MACS * 32 * 32

# The input layouts that matter: a dynamic batch axis, a fixed batch of 1, and no batch axis at all.
SIGNATURES = {
    "dynamic-batch": ("(float[batch,4] x) => (float[batch,3] y)", (16, 4)),
    "fixed-batch-1": ("(float[1,4] x) => (float[1,3] y)", (16, 4)),
    "no-batch-axis": ("(float[4] x) => (float[3] y)", (16, 4)),
}


def _write_model(path: Path, signature: str, weight: np.ndarray) -> Path:
    proto = onnx.parser.parse_model(f"{_HEADER}g {signature} {{ y = MatMul(x, w) }}")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    onnx.save(proto, str(path))
    return path


def _weight() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    """Outputs of ``path`` for every sample of ``x``, one sample at a time, straight from onnxruntime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rank = len(session.get_inputs()[0].shape)
    outputs = []
    for sample in x:
        feed = sample if sample.ndim == rank else sample[np.newaxis]
        outputs.append(session.run(None, {"x": feed})[0].reshape(-1))
    return np.stack(outputs)


@pytest.fixture(params=list(SIGNATURES))
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A reference model, a copy with slightly perturbed weights, and 16 input samples."""
    signature, shape = SIGNATURES[request.param]
    weight = _weight()
    noise = np.random.default_rng(1).standard_normal(weight.shape).astype(np.float32)
    reference = _write_model(tmp_path / "reference.onnx", signature, weight)
    candidate = _write_model(tmp_path / "candidate.onnx", signature, weight + 0.05 * noise)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    return reference, candidate, x


def _measure(pair: tuple[Path, Path, np.ndarray], target: str = "cpu", labels: bool = False, runs: int = 3) -> PairFigures:
    reference, candidate, x = pair
    label_array = np.argmax(_run(reference, x), axis=-1) if labels else None
    dataset = Dataset({"x": x}, label_array, "test")
    return measure_pair(reference, candidate, load_target(target), dataset, latency_runs=runs, warmup=1)


def test_cpu_target_latency_is_measured_single_threaded_with_the_runs_asked(pair: tuple[Path, Path, np.ndarray]) -> None:
    figures = _measure(pair, runs=3)
    for model in (figures.baseline, figures.optimized):
        assert model.latency.estimated is False
        assert model.latency.threads == 1
        assert model.latency.runs == 3
        assert 0.0 < model.latency.p50 <= model.latency.p90
        assert model.latency.method.startswith("measured: onnxruntime CPUExecutionProvider")


def test_macs_and_bops_equal_the_hand_count_per_sample(pair: tuple[Path, Path, np.ndarray]) -> None:
    figures = _measure(pair)
    for model in (figures.baseline, figures.optimized):
        assert model.macs == MACS
        assert model.bops == BOPS
        assert model.weight_bits == 4 * 3 * 32


def test_size_bytes_equal_the_file_size(pair: tuple[Path, Path, np.ndarray]) -> None:
    reference, candidate, _ = pair
    figures = _measure(pair)
    assert figures.baseline.size_bytes == reference.stat().st_size
    assert figures.optimized.size_bytes == candidate.stat().st_size
    assert figures.baseline.path == str(reference)


def test_accuracy_against_labels_from_the_reference_is_one_for_the_baseline(pair: tuple[Path, Path, np.ndarray]) -> None:
    reference, candidate, x = pair
    labels = np.argmax(_run(reference, x), axis=-1)
    figures = _measure(pair, labels=True)
    assert figures.baseline.accuracy == 1.0
    assert figures.optimized.accuracy == pytest.approx(float(np.mean(np.argmax(_run(candidate, x), axis=-1) == labels)))


def test_accuracy_is_none_without_labels(pair: tuple[Path, Path, np.ndarray]) -> None:
    figures = _measure(pair)
    assert figures.baseline.accuracy is None
    assert figures.optimized.accuracy is None


def test_fidelity_compares_the_candidate_with_the_reference(pair: tuple[Path, Path, np.ndarray]) -> None:
    reference, candidate, x = pair
    y_ref, y_cand = _run(reference, x), _run(candidate, x)
    figures = _measure(pair)
    expected_sqnr = 10.0 * np.log10(np.sum(y_ref.astype(np.float64) ** 2) / np.sum((y_ref - y_cand).astype(np.float64) ** 2))
    assert figures.fidelity.sqnr_db == pytest.approx(expected_sqnr, rel=1e-3)
    assert figures.fidelity.max_abs_error > 0.0
    assert figures.fidelity.samples == 16


def test_fidelity_top1_agreement_is_present_for_a_classifier_output(tmp_path: Path) -> None:
    signature, shape = SIGNATURES["dynamic-batch"]
    weight = _weight()
    reference = _write_model(tmp_path / "reference.onnx", signature, weight)
    candidate = _write_model(tmp_path / "candidate.onnx", signature, weight[:, ::-1].copy())  # permuted classes
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    figures = _measure((reference, candidate, x))
    expected = float(np.mean(np.argmax(_run(reference, x), -1) == np.argmax(_run(candidate, x), -1)))
    assert figures.fidelity.top1_agreement == pytest.approx(expected)
    assert expected < 1.0


def test_vbit_target_latency_is_estimated_from_bops(pair: tuple[Path, Path, np.ndarray]) -> None:
    target = load_target("vbit")
    figures = _measure(pair, target="vbit")
    expected = BOPS / target.cost.bops_per_second * 1e3
    for model in (figures.baseline, figures.optimized):
        assert model.latency.estimated is True
        assert model.latency.p50 == pytest.approx(expected, rel=1e-12)
        assert model.latency.p90 == pytest.approx(expected, rel=1e-12)
        assert "cost model 'bops'" in model.latency.method


@pytest.mark.skipif(
    "TensorrtExecutionProvider" in ort.get_available_providers(), reason="the gpu target's provider is available here"
)
def test_gpu_target_without_its_provider_estimates_latency_and_says_why(pair: tuple[Path, Path, np.ndarray]) -> None:
    target = load_target("gpu")
    figures = _measure(pair, target="gpu")
    for model in (figures.baseline, figures.optimized):
        assert model.latency.estimated is True
        assert "TensorrtExecutionProvider is not available here" in model.latency.method
        assert model.latency.p50 == pytest.approx(BOPS / target.cost.bops_per_second * 1e3)
        assert model.latency.runs is None


def test_to_dict_reports_latency_ms_with_estimated_flag(pair: tuple[Path, Path, np.ndarray]) -> None:
    data = _measure(pair).baseline.to_dict()
    assert {"path", "size_bytes", "macs", "bops", "weight_bits", "latency_ms", "accuracy"} <= set(data)
    assert {"p50", "p90", "estimated", "method"} <= set(data["latency_ms"])
    assert data["macs_unresolved_nodes"] == []


@pytest.mark.parametrize("target", ["cpu", "vbit"])
def test_fixed_batch_of_two_is_measured(tmp_path: Path, target: str) -> None:
    signature = "(float[2,4] x) => (float[2,3] y)"
    reference = _write_model(tmp_path / "reference.onnx", signature, _weight())
    candidate = _write_model(tmp_path / "candidate.onnx", signature, _weight() * 1.01)
    x = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    figures = measure_pair(reference, candidate, load_target(target), Dataset({"x": x}, None, "test"), latency_runs=2)
    assert figures.baseline.macs > 0


@pytest.mark.parametrize(
    ("option", "value"),
    [("latency_runs", 0), ("latency_runs", -3), ("latency_batch", 0), ("threads", 0), ("latency_runs", True),
     ("latency_batch", 2.5)],
)  # fmt: skip
def test_measurement_options_that_cannot_give_a_latency_are_refused_in_one_line(
    pair: tuple[Path, Path, np.ndarray], option: str, value: object
) -> None:
    from onnxpq.errors import OnnxpqError

    reference, candidate, x = pair
    with pytest.raises(OnnxpqError, match=rf"^{option} must be an integer of at least 1, got {value!r}$"):
        measure_pair(reference, candidate, load_target("cpu"), Dataset({"x": x}, None, "test"), **{option: value})


@pytest.mark.parametrize("api", ["optimize", "validate", "package", "explore"])
def test_public_api_refuses_zero_latency_runs_before_writing_anything(
    pair: tuple[Path, Path, np.ndarray], tmp_path: Path, api: str
) -> None:
    """``latency_runs=0`` once failed deep in the timing with an IndexError after the passes had run."""
    import onnxpq
    from onnxpq.errors import OnnxpqError

    reference, _, _ = pair
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    calls = {
        "optimize": lambda: onnxpq.optimize(reference, out / "m.onnx", latency_runs=0, progress=False),
        "validate": lambda: onnxpq.validate(reference, reference, latency_runs=0, report=out / "r.json"),
        "package": lambda: onnxpq.package(reference, out, latency_runs=0),
        "explore": lambda: onnxpq.explore(reference, out, latency_runs=0),
    }
    with pytest.raises(OnnxpqError, match="^latency_runs must be an integer of at least 1, got 0$"):
        calls[api]()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
