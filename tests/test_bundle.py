"""Deployment bundles: ``onnxpq package`` writes them atomically, ``package --verify`` re-checks them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxpq.bundle import BUNDLE_SCHEMA, load_bundle_session, read_manifest
from onnxpq.cli import main

TEXT = """
<ir_version: 8, opset_import: ["": 17]>
g (float[N, 4] x) => (float[N, 3] y) {
  a = Identity(x)
  h = MatMul(a, w)
  y = Relu(h)
}
"""
FAST = ["--pipeline", "eliminate-identity,eliminate-dead", "--latency-runs", "2", "--tune-budget", "0.3", "-q"]


def _model(path: Path) -> Path:
    proto = onnx.parser.parse_model(TEXT)
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    onnx.save(proto, path)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bundle (with its reference) packaged once for the module; tests copy it before changing it."""
    root = tmp_path_factory.mktemp("bundle")
    model = _model(root / "m.onnx")
    assert main(["package", str(model), "-o", str(root / "bundle"), "--include-reference", *FAST]) == 0
    return root / "bundle"


@pytest.fixture
def bundle(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(built, copy)
    return copy


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_lists_every_file_with_its_hash_and_size(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    assert manifest["schema"] == BUNDLE_SCHEMA
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == {"model.onnx", "golden.npz", "report.json", "report.html", "reference/m.onnx"}
    for rel, entry in listed.items():
        assert entry["sha256"] == _sha(bundle / rel) and entry["size_bytes"] == (bundle / rel).stat().st_size


def test_manifest_has_signatures_with_symbolic_dims_versions_and_pipeline(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    assert manifest["inputs"] == [{"name": "x", "type": "tensor(float)", "dtype": "float", "shape": ["N", 4]}]
    assert manifest["outputs"][0]["shape"] == ["N", 3]
    assert {"onnxpq", "onnx", "onnxruntime"} <= set(manifest["created_with"])
    assert manifest["pipeline"] == "eliminate-identity,eliminate-dead"
    assert manifest["validation"]["fidelity"]["identical"] is True


def test_recipe_is_the_tuned_setting_and_loads(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    tuning = manifest["session_tuning"]
    assert tuning["measured"] and manifest["recipe"]["session_options"] == tuning["best_session_options"]
    assert any(row["chosen"] for row in tuning["table"])
    session = load_bundle_session(bundle)
    out = session.run(None, {"x": np.ones((2, 4), np.float32)})[0]
    assert out.shape == (2, 3)


def test_report_in_the_bundle_carries_session_tuning(bundle: Path) -> None:
    report = json.loads((bundle / "report.json").read_text())
    assert report["session_tuning"]["table"] and report["schema"] == "onnxpq.report/1"


def test_non_empty_destination_is_refused_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _model(tmp_path / "m.onnx")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert main(["package", str(model), "-o", str(dest), *FAST]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    assert main(["package", str(model), "-o", str(dest), "--force", *FAST]) == 0
    assert not (dest / "keep.txt").exists() and (dest / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out"]  # no staging folder left


def test_force_never_replaces_the_folder_holding_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "models").mkdir()
    model = _model(tmp_path / "models" / "m.onnx")
    assert main(["package", str(model), "-o", str(tmp_path / "models"), "--force", *FAST]) == 2
    assert "holds the input" in capsys.readouterr().err and model.is_file()


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    model = _model(tmp_path / "m.onnx")
    code = main(["package", str(model), "-o", str(tmp_path / "out"), "--pipeline", "no-such-pass", "-q"])
    assert code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_verify_passes_on_an_untouched_bundle(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["package", "--verify", str(bundle), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and result["golden"]["passed"] and result["fidelity"]["identical"]
    assert result["reference"].endswith("reference/m.onnx")


@pytest.mark.parametrize("change", ["modify", "delete"])
@pytest.mark.parametrize("rel", ["model.onnx", "report.json", "reference/m.onnx"])
def test_verify_names_a_tampered_or_missing_file_and_exits_2(
    bundle: Path, capsys: pytest.CaptureFixture[str], change: str, rel: str
) -> None:
    if change == "modify":
        with (bundle / rel).open("ab") as handle:
            handle.write(b"\0")
    else:
        (bundle / rel).unlink()
    assert main(["package", "--verify", str(bundle)]) == 2
    err = capsys.readouterr().err
    assert rel in err and ("modified" if change == "modify" else "missing") in err


def test_verify_reports_an_unexpected_file_but_passes(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bundle / "notes.txt").write_text("hello")
    assert main(["package", "--verify", str(bundle)]) == 0
    assert "not in the manifest: notes.txt" in capsys.readouterr().out


def test_verify_exits_1_when_the_model_no_longer_reproduces_its_golden_outputs(
    bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with np.load(bundle / "golden.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["output.y"] = arrays["output.y"] + 1.0
    with (bundle / "golden.npz").open("wb") as handle:
        np.savez(handle, **arrays)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["files"]:  # a consistent manifest: the hashes hold, the numbers do not
        if entry["path"] == "golden.npz":
            entry["sha256"], entry["size_bytes"] = _sha(bundle / "golden.npz"), (bundle / "golden.npz").stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert main(["package", "--verify", str(bundle)]) == 1
    assert "differ from those recorded" in capsys.readouterr().out


def test_verify_refuses_a_manifest_path_outside_the_bundle(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"].append({"path": "../secret", "sha256": "0", "size_bytes": 0})
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert main(["package", "--verify", str(bundle)]) == 2
    assert "unsafe file path '../secret'" in capsys.readouterr().err


def test_verify_of_a_folder_without_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["package", "--verify", str(tmp_path)]) == 2
    assert "missing manifest.json" in capsys.readouterr().err


def test_verify_with_a_given_reference_and_labelled_data_checks_accuracy(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = bundle / "reference" / "m.onnx"
    x = np.random.default_rng(2).standard_normal((16, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.zeros(16, np.int64))
    assert main(["package", "--verify", str(bundle), "--reference", str(reference), "--data", str(tmp_path / "d.npz"),
                 "--max-accuracy-drop", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"]["drop"] == 0.0 and result["fidelity"]["samples"] == 16


def test_package_takes_its_options_from_the_config_package_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _model(tmp_path / "m.onnx")
    (tmp_path / "onnxpq.toml").write_text(
        'model = "m.onnx"\npipeline = "eliminate-identity"\nlatency-runs = 2\n'
        '[outputs]\noutput = "m.opt.onnx"\n[package]\noutput = "dist/bundle"\ntune-budget = 0.3\n'
    )
    (tmp_path / "dist").mkdir()
    monkeypatch.chdir(tmp_path / "dist")
    assert main(["package", "--config", str(tmp_path / "onnxpq.toml"), "-q"]) == 0
    assert read_manifest(tmp_path / "dist" / "bundle")["pipeline"] == "eliminate-identity"


@pytest.mark.parametrize(("flags", "measured"), [([], True), (["--no-payoff"], False)])
def test_package_runs_the_int8_payoff_unless_told_not_to(tmp_path: Path, flags: list[str], measured: bool) -> None:
    model = _model(tmp_path / "m.onnx")
    args = ["package", str(model), "-o", str(tmp_path / "b"), "--latency-runs", "2", "--no-tune", "-q", *flags]
    assert main(args) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert ("int8_payoff" in report) is measured
