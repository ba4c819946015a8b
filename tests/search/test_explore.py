"""explore end to end on a tiny CNN: outputs, schema, resume without re-evaluation, gate and usage exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest

from onnxpq.cli import main
from onnxpq.search.explore import SCHEMA, explore


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_cnn) -> tuple[Path, Path, Path, dict]:
    folder = tmp_path_factory.mktemp("explore")
    model, data = tiny_cnn(folder)
    out = folder / "out"
    doc = explore(model, out, target="cpu", data=data, points=4, latency_runs=3).document
    return model, data, out, doc


def test_outputs_are_written(run: tuple) -> None:
    _, _, out, doc = run
    assert (out / "frontier.json").is_file() and (out / "best.onnx").is_file()
    html = (out / "report.html").read_text()
    assert "<svg" in html and "Per-layer decisions" in html and "http" not in html.split("<svg", 1)[0].split("<style>")[0]
    frontier_models = list((out / "models").glob("*.onnx"))
    on = [p for p in doc["points"] if p["kind"] == "planned" and p["on_frontier"][doc["primary_cost"]]]
    assert len(frontier_models) == len(on) >= 1
    ort.InferenceSession(str(out / "best.onnx"), providers=["CPUExecutionProvider"])


def test_frontier_json_schema(run: tuple) -> None:
    _, _, out, doc = run
    saved = json.loads((out / "frontier.json").read_text())
    assert saved["schema"] == SCHEMA
    planned = [p for p in saved["points"] if p["kind"] == "planned"]
    assert planned and {"b-float", "b-target-default", "b-uniform-w4", "b-uniform-prune50"} <= {p["id"] for p in saved["points"]}
    assert {layer["name"]: layer["channel_producers"] for layer in saved["layers"]} == {
        "conv1": ["conv1"], "conv2": ["conv2"], "fc": []}  # owners produce their groups; fc owns none
    for p in planned:
        assert set(p["layers"]) == {"conv1", "conv2", "fc"}
        assert p["pipeline"].startswith("constants-to-initializers")
        assert set(p["costs"]) == {"latency_ms", "bops", "macs", "weight_bits"}
        assert p["quality_measure"] == "accuracy"


def test_frontier_points_are_not_dominated(run: tuple) -> None:
    doc = run[3]
    planned = [p for p in doc["points"] if p["kind"] == "planned"]
    for figure in ("bops", "weight_bits"):
        for p in planned:
            dominated = any(
                q["costs"][figure] <= p["costs"][figure] and q["quality"] >= p["quality"]
                and (q["costs"][figure] < p["costs"][figure] or q["quality"] > p["quality"]) for q in planned
            )
            assert p["on_frontier"][figure] == (not dominated)


def test_the_target_default_is_a_planned_configuration(run: tuple) -> None:
    doc = run[3]
    default = next(p for p in doc["points"] if p["id"] == "b-target-default")
    planned = [p for p in doc["points"] if p["kind"] == "planned" and p["pipeline"] == default["pipeline"]]
    assert len(planned) == 1 and set(planned[0]["layers"].values()) == {"int8"}
    assert planned[0]["how"].startswith("anchor")


def test_identical_pipelines_share_one_latency(run: tuple) -> None:
    points = {p["id"]: p for p in run[3]["points"]}
    twin = next(p for p in points.values() if p["kind"] == "planned" and p["pipeline"] == points["b-float"]["pipeline"])
    assert twin["costs"]["latency_ms"] == points["b-float"]["costs"]["latency_ms"]
    assert twin["id"] in points["b-float"]["latency_shared_with"]
    low, high = twin["latency_interval_ms"]
    assert low <= twin["costs"]["latency_ms"] <= high


def test_different_pipelines_making_the_same_model_share_one_latency(run: tuple) -> None:
    out, doc = run[2], run[3]
    points = {p["id"]: p for p in doc["points"]}
    uniform = points["b-uniform-prune50"]
    anchor = next(p for p in points.values() if p["kind"] == "planned"
                  and p["layers"] == {"conv1": "prune50%", "conv2": "prune50%", "fc": "float"})
    assert anchor["pipeline"] != uniform["pipeline"]  # per-node ratios on every owner vs one ratio
    built = {p.read_bytes() for p in (out / "cache" / "built").glob("*.onnx")}
    assert len(built) < len(list((out / "cache" / "built").glob("*.onnx")))  # some builds are byte-identical
    assert anchor["id"] in uniform["latency_shared_with"]
    assert anchor["costs"]["latency_ms"] == uniform["costs"]["latency_ms"]


def test_baseline_verdicts_state_the_tolerance_beside_the_strict_one(run: tuple) -> None:
    doc = run[3]
    tolerance = doc["latency_noise"]["relative_tolerance"]
    assert tolerance >= 0.0 and doc["latency_noise"]["rounds"] == 3
    for verdict in doc["baseline_comparison"]["latency_ms"].values():
        assert verdict["tolerance"] == tolerance and "dominates" in verdict and "dominates_within_tolerance" in verdict
        assert not verdict["dominates"] or verdict["dominates_within_tolerance"]
    assert all(v["tolerance"] == 0.0 for v in doc["baseline_comparison"]["bops"].values())


def test_chosen_is_the_cheapest_within_the_default_drop(run: tuple) -> None:
    doc = run[3]
    primary = doc["primary_cost"]
    ok = [p for p in doc["points"] if p["kind"] == "planned" and p["drop"] <= 0.01]
    best = next(p for p in doc["points"] if p["id"] == doc["chosen"])
    assert doc["gate"]["passed"] and best["costs"][primary] == min(p["costs"][primary] for p in ok)


def test_second_run_evaluates_nothing_new(run: tuple, caplog: pytest.LogCaptureFixture) -> None:
    model, data, out, _ = run
    lines = (out / "cache" / "evaluations.jsonl").read_text().count("\n")
    with caplog.at_level("INFO", logger="onnxpq.search.evaluation"):
        explore(model, out, target="cpu", data=data, points=4, latency_runs=3)
    assert (out / "cache" / "evaluations.jsonl").read_text().count("\n") == lines
    assert not [r for r in caplog.records if "evaluating" in r.getMessage()]


@pytest.mark.heavy
def test_unmeetable_budget_exits_1_with_outputs(run: tuple, tmp_path: Path) -> None:
    model, data, _, _ = run
    code = main(["explore", str(model), "-t", "cpu", "--data", str(data), "-o", str(tmp_path / "o"),
                 "--budget", "0.001", "--points", "3", "--latency-runs", "2", "-q"])
    assert code == 1
    assert (tmp_path / "o" / "frontier.json").is_file() and (tmp_path / "o" / "best.onnx").is_file()


def test_budget_and_drop_together_is_a_usage_error(run: tuple, tmp_path: Path) -> None:
    model, data, _, _ = run
    with pytest.raises(SystemExit) as exc:
        main(["explore", str(model), "--data", str(data), "-o", str(tmp_path / "o"), "--budget", "0.5", "--max-accuracy-drop", "0.01"])
    assert exc.value.code == 2
    assert not (tmp_path / "o").exists()


def test_missing_model_exits_2(tmp_path: Path) -> None:
    assert main(["explore", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "o"), "-q"]) == 2
