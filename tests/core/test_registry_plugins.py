"""Plugins: passes and targets from entry points, and broken plugins that must only be warnings.

The in-process tests feed the registry hand-made entry points; the end-to-end
test installs the example plugin under ``tests/plugins/`` into a temporary
folder with pip (no network: ``--no-deps --no-build-isolation``) and runs the
``onnxpq`` command in a subprocess with that folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from onnxpq.core import registry
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.core.pipeline_text import parse_pipeline
from onnxpq.targets import profile

PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "plugins" / "onnxpq-example-plugin"

TEXT = """
<ir_version: 8, opset_import: ["": 17]>
g (float[N, 4] x) => (float[N, 4] y) {
  a = Identity(x)
  y = Relu(a)
}
"""

TARGET_TOML = """
name = "fake-accel"
description = "a fake accelerator from a plugin"
providers = ["CPUExecutionProvider"]
pipeline = "eliminate-identity"
[quantize]
weight_bits = [8]
activation_bits = [8]
weight_granularity = ["per-channel"]
symmetric_weights = true
activation_type = "uint8"
format = "qdq"
float_types = ["float32"]
[sparsity]
unstructured = "none"
n_m = []
channel_multiple = 1
[cost]
bops_per_second = 1.0e12
model = "measured"
"""


class FakeTagPass(OnnxpqPass):
    """Tag the model (a test plugin pass)."""

    name = "fake-tag"
    exact = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, False)


class ClashingPass(OnnxpqPass):
    """Claims a built-in's name."""

    name = "fold-batchnorm"
    exact = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, False)


@pytest.fixture
def fake_plugins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list[metadata.EntryPoint]]:
    """A fresh registry whose entry points are the lists in the returned dict (group -> entry points)."""
    module = types.ModuleType("fake_onnxpq_plugin")
    module.FakeTagPass = FakeTagPass  # type: ignore[attr-defined]
    module.ClashingPass = ClashingPass  # type: ignore[attr-defined]
    module.not_a_pass = 42  # type: ignore[attr-defined]
    (tmp_path / "fake.toml").write_text(TARGET_TOML)
    (tmp_path / "bad.toml").write_text(TARGET_TOML.replace('model = "measured"', 'model = "guessed"'))
    module.fake_target = lambda: tmp_path / "fake.toml"  # type: ignore[attr-defined]
    module.bad_target = str(tmp_path / "bad.toml")  # type: ignore[attr-defined]

    def raising() -> Path:
        raise RuntimeError("plugin exploded")

    module.raising_target = raising  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_onnxpq_plugin", module)
    groups: dict[str, list[metadata.EntryPoint]] = {registry.PASS_GROUP: [], registry.TARGET_GROUP: []}
    monkeypatch.setattr(registry, "_entry_points", lambda group: groups[group])
    registry.registered_passes()  # built-ins in, before the registry is swapped
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ORIGINS", {})
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", [])
    registry.plugin_target_paths.cache_clear()
    profile.plugin_targets.cache_clear()
    yield groups
    registry.plugin_target_paths.cache_clear()
    profile.plugin_targets.cache_clear()


def _ep(name: str, value: str, group: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=group)


def test_plugin_pass_class_is_registered_and_parses_in_a_pipeline(fake_plugins: dict) -> None:
    fake_plugins[registry.PASS_GROUP].append(_ep("fake-tag", "fake_onnxpq_plugin:FakeTagPass", registry.PASS_GROUP))
    assert registry.registered_passes()["fake-tag"] is FakeTagPass
    assert registry.pass_origin("fake-tag").startswith("plugin")
    assert registry.pass_origin("fold-batchnorm") == "built-in"
    assert isinstance(parse_pipeline("eliminate-dead,fake-tag")[1], FakeTagPass)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("no_such_module_for_onnxpq:Pass", "ModuleNotFoundError"),
        ("fake_onnxpq_plugin:missing_attribute", "AttributeError"),
        ("fake_onnxpq_plugin:not_a_pass", "not an OnnxpqPass subclass"),
        ("fake_onnxpq_plugin:ClashingPass", "registered twice"),
    ],
)
def test_broken_pass_plugin_is_a_warning_naming_it(
    fake_plugins: dict, caplog: pytest.LogCaptureFixture, value: str, reason: str
) -> None:
    fake_plugins[registry.PASS_GROUP].append(_ep("bad-one", value, registry.PASS_GROUP))
    with caplog.at_level(logging.WARNING, logger="onnxpq.core.registry"):
        passes = registry.registered_passes()
    assert "bad-one" in caplog.text and reason in caplog.text
    assert passes["fold-batchnorm"].__name__ == "FoldBatchNormPass"  # a built-in is never replaced


def test_plugin_target_loads_by_name(fake_plugins: dict) -> None:
    fake_plugins[registry.TARGET_GROUP].append(_ep("fake-accel", "fake_onnxpq_plugin:fake_target", registry.TARGET_GROUP))
    target = profile.load_target("fake-accel")
    assert target.name == "fake-accel" and "plugin" in target.source
    assert profile.target_names()[-1] == "fake-accel"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("fake_onnxpq_plugin:raising_target", "plugin exploded"),
        ("fake_onnxpq_plugin:not_a_pass", "not a path"),
        ("fake_onnxpq_plugin:bad_target", "cost.model"),
    ],
)
def test_broken_target_plugin_is_a_warning_and_left_out(
    fake_plugins: dict, caplog: pytest.LogCaptureFixture, value: str, reason: str
) -> None:
    fake_plugins[registry.TARGET_GROUP].append(_ep("bad-target", value, registry.TARGET_GROUP))
    with caplog.at_level(logging.WARNING):
        names = profile.target_names()
    assert "bad-target" not in names and "cpu" in names
    assert "bad-target" in caplog.text and reason in caplog.text


def test_plugin_target_cannot_shadow_a_builtin(fake_plugins: dict, caplog: pytest.LogCaptureFixture) -> None:
    fake_plugins[registry.TARGET_GROUP].append(_ep("cpu", "fake_onnxpq_plugin:fake_target", registry.TARGET_GROUP))
    with caplog.at_level(logging.WARNING):
        assert profile.target_names().count("cpu") == 1
    assert profile.load_target("cpu").source == "'cpu' (built-in)"
    assert "is a built-in target" in caplog.text


# --------------------------------------------------------------------------- end to end, installed with pip


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a subprocess that sees the example plugin (installed into a temporary folder)."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(PLUGIN_SOURCE, source)  # the build writes build/ and .egg-info beside the sources: not in the repo
    target = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(target), env.get("PYTHONPATH", "")) if p)
    return env


def _onnxpq(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxpq.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(onnx.parser.parse_model(TEXT), path)
    return path


@pytest.mark.heavy
def test_installed_plugin_pass_is_listed_and_broken_entry_point_only_warns(installed_plugin: dict[str, str]) -> None:
    done = _onnxpq(installed_plugin, "passes")
    assert done.returncode == 0, done.stderr
    assert "example-doc-string" in done.stdout
    assert "broken-pass" in done.stderr and "WARNING" in done.stderr


@pytest.mark.heavy
def test_installed_plugin_target_is_listed(installed_plugin: dict[str, str]) -> None:
    done = _onnxpq(installed_plugin, "targets")
    assert done.returncode == 0, done.stderr
    assert "example-cpu" in done.stdout
    assert "broken-target" in done.stderr and "broken-target" not in done.stdout


@pytest.mark.heavy
def test_installed_plugin_pass_runs_in_a_pipeline(installed_plugin: dict[str, str], model_path: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    done = _onnxpq(installed_plugin, "optimize", str(model_path), "-o", str(out), "--pipeline",
                   "example-doc-string{text=hello},eliminate-identity", "--latency-runs", "2", "-q")
    assert done.returncode == 0, done.stderr
    assert onnx.load(out).graph.doc_string == "hello"


@pytest.mark.heavy
def test_installed_plugin_target_works_with_t(installed_plugin: dict[str, str], model_path: Path,
                                              tmp_path: Path) -> None:
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    done = _onnxpq(installed_plugin, "optimize", str(model_path), "-o", str(out), "-t", "example-cpu",
                   "--report", str(report), "--latency-runs", "2", "-q")
    assert done.returncode == 0, done.stderr
    assert onnx.load(out).graph.doc_string == "from-the-example-target"
    assert json.loads(report.read_text())["target"]["name"] == "example-cpu"
