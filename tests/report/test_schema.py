"""Tests for onnxpq.report.schema: the JSON report of a real optimize run carries every documented field."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from onnxpq.report.schema import SCHEMA, report_json
from onnxpq.targets.profile import load_target


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"report JSON contains {name}")


def _strict_loads(text: str) -> Any:
    """json.loads that fails on NaN, Infinity and -Infinity (which are not JSON)."""
    return json.loads(text, parse_constant=_refuse_constant)


@pytest.fixture(scope="module")
def report(build_report: Callable[..., Any]) -> dict[str, Any]:
    return build_report().report


def test_schema_is_onnxpq_report_1(report: dict[str, Any]) -> None:
    assert report["schema"] == SCHEMA == "onnxpq.report/1"


def test_target_names_the_target_and_its_cost_model(report: dict[str, Any]) -> None:
    cpu = load_target("cpu")
    assert report["target"]["name"] == "cpu"
    assert report["target"]["providers"] == list(cpu.providers)
    assert report["target"]["cost_model"] == cpu.cost.model
    assert report["target"]["description"] == cpu.description


def test_pipeline_is_the_exact_text_that_ran(report: dict[str, Any]) -> None:
    assert report["pipeline"] == "constants-to-initializers,eliminate-identity,fold-batchnorm,eliminate-dead"
    assert [p["pipeline"] for p in report["passes"]] == report["pipeline"].split(",")


@pytest.mark.parametrize("side", ["baseline", "optimized"])
def test_model_figures_have_size_macs_bops_latency_and_accuracy(report: dict[str, Any], side: str) -> None:
    figures = report[side]
    assert isinstance(figures["size_bytes"], int) and figures["size_bytes"] > 0
    assert figures["macs"] == 4 * 3
    assert figures["bops"] == 4 * 3 * 32 * 32
    latency = figures["latency_ms"]
    assert {"p50", "p90", "estimated"} <= set(latency)
    assert latency["estimated"] is False
    assert 0.0 < latency["p50"] <= latency["p90"]
    assert figures["accuracy"] == 1.0  # labels are the reference's argmax; the cleanup passes are exact


def test_size_bytes_match_the_files_on_disk(build_report: Callable[..., Any]) -> None:
    built = build_report()
    assert built.report["baseline"]["size_bytes"] == built.model.stat().st_size
    assert built.report["optimized"]["size_bytes"] == built.output.stat().st_size
    assert built.report["optimized"]["path"] == str(built.output)


def test_fidelity_has_sqnr_cosine_top1_and_max_error(report: dict[str, Any]) -> None:
    fidelity = report["fidelity"]
    assert {"sqnr_db", "cosine", "top1_agreement", "max_abs_error"} <= set(fidelity)
    # exact passes only: identical outputs, so sqnr is None (not Infinity) and identical is true
    assert fidelity["sqnr_db"] is None
    assert fidelity["identical"] is True
    assert fidelity["cosine"] == pytest.approx(1.0)
    assert fidelity["top1_agreement"] == 1.0
    assert fidelity["max_abs_error"] == 0.0


def test_passes_record_name_seconds_modified_and_node_counts(report: dict[str, Any]) -> None:
    passes = report["passes"]
    assert [p["name"] for p in passes] == [
        "constants-to-initializers",
        "eliminate-identity",
        "fold-batchnorm",
        "eliminate-dead",
    ]
    for entry in passes:
        assert {"name", "seconds", "modified", "nodes_before", "nodes_after"} <= set(entry)
        assert entry["seconds"] >= 0.0
        assert isinstance(entry["modified"], bool)
    identity = passes[1]
    assert identity["modified"] is True
    assert (identity["nodes_before"], identity["nodes_after"]) == (3, 2)


def test_gate_without_a_threshold_passes(report: dict[str, Any]) -> None:
    assert report["gate"]["passed"] is True
    assert report["gate"]["reasons"] == []


def test_data_section_says_labelled_samples_and_the_disjoint_calibration_split(report: dict[str, Any]) -> None:
    # 24 samples in --data and no --calibration: a quarter (6) calibrates, the other 18 validate
    assert report["data"]["samples"] == 18
    assert report["data"]["labels"] is True
    assert report["data"]["calibration"]["samples"] == 6
    assert "calibration split" in report["data"]["calibration"]["source"]


def test_report_json_round_trips_without_nan_or_infinity(report: dict[str, Any]) -> None:
    text = report_json(report)
    loaded = _strict_loads(text)
    assert loaded == json.loads(json.dumps(report, allow_nan=True))  # the report is already plain data
    assert loaded["schema"] == SCHEMA


def test_report_file_written_by_optimize_equals_report_json(build_report: Callable[..., Any]) -> None:
    built = build_report()
    text = built.json_path.read_text()
    assert _strict_loads(text) == _strict_loads(report_json(built.report))


def test_report_json_writes_non_finite_floats_as_null(report: dict[str, Any]) -> None:
    changed = json.loads(json.dumps(report))
    changed["baseline"]["latency_ms"]["p50"] = math.nan
    changed["ratios"]["size"] = math.inf
    changed["fidelity"]["cosine"] = -math.inf
    loaded = _strict_loads(report_json(changed))
    assert loaded["baseline"]["latency_ms"]["p50"] is None
    assert loaded["ratios"]["size"] is None
    assert loaded["fidelity"]["cosine"] is None
