"""Per-layer sensitivity on a tiny CNN: candidates, kept channel fractions, the on-disk cache, additivity."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxpq.search.explore import explore
from onnxpq.search.sensitivity import additivity


@pytest.fixture(scope="module")
def explored(tmp_path_factory: pytest.TempPathFactory, tiny_cnn) -> dict:
    folder = tmp_path_factory.mktemp("sens")
    model, data = tiny_cnn(folder)
    return explore(model, folder / "out", target="vbit", data=data, points=3, weight_bits=(2, 8),
                   weight_method="rtn", latency_runs=2).document


def test_every_layer_gets_the_target_candidates(explored: dict) -> None:
    sens = explored["sensitivity"]
    assert set(sens) == {"conv1", "conv2", "fc"}
    for layer in sens:
        names = {e["candidate"] for e in sens[layer]}
        assert {"w2", "w8", "s50%"} <= names  # vbit: weight bits and unstructured zeros (it skips them)
        assert {"a4", "a6", "a8"} <= names  # and its activation widths, each measured alone


def test_activation_candidates_are_measured_alone_and_fewer_bits_are_noisier(explored: dict) -> None:
    for layer, entries in explored["sensitivity"].items():
        noise = {e["candidate"]: e["noise"] for e in entries if e["axis"] == "activation"}
        assert set(noise) == {"a4", "a6", "a8"}
        assert 0 < noise["a8"] < noise["a6"] < noise["a4"], layer


def test_planned_configurations_combine_weight_and_activation_widths(explored: dict) -> None:
    labels = {label for p in explored["points"] if p["kind"] == "planned" for label in p["layers"].values()}
    assert any("a" in label.split("+")[0] and label.startswith("w") for label in labels), labels


def test_fewer_bits_are_noisier(explored: dict) -> None:
    for layer, entries in explored["sensitivity"].items():
        noise = {e["candidate"]: e["noise"] for e in entries}
        assert 0 < noise["w8"] < noise["w2"], layer


def test_channel_candidates_record_the_kept_fraction(explored: dict) -> None:
    entries = {e["candidate"]: e for e in explored["sensitivity"]["conv1"] if e["axis"] == "channels"}
    assert entries["prune50%"]["keep"] == pytest.approx(0.5)  # 32 channels, multiple 16: 16 kept
    assert "prune25%" not in entries  # 24 would round back up to 32: removes nothing, dropped


def test_additivity_statistics_on_a_perfect_and_a_broken_predictor() -> None:
    predicted = [1e-4, 1e-3, 1e-2, 1e-1]
    good = additivity(predicted, [2 * p for p in predicted])
    assert good["pearson_log10"] == pytest.approx(1.0) and good["ratio_median"] == pytest.approx(2.0)
    bad = additivity(predicted, list(reversed(predicted)))
    assert bad["spearman"] == pytest.approx(-1.0)
