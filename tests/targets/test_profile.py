"""Tests for onnxpq.targets.profile: built-in targets, user TOML files, and the errors that name the bad key."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from onnxpq.core.pipeline_text import parse_pipeline
from onnxpq.errors import TargetError
from onnxpq.targets.profile import CostSpec, QuantizeSpec, SparsitySpec, Target, builtin_targets, load_target

BUILTINS = ["cpu", "gpu", "vbit"]

# A complete, valid user profile as plain data; every error case below changes one thing in it.
_VALID: dict[str, Any] = {
    "name": "edge-npu",
    "description": "a made-up accelerator",
    "providers": ["CPUExecutionProvider"],
    "pipeline": "eliminate-identity,eliminate-dead",
    "quantize": {
        "weight_bits": [4, 8],
        "activation_bits": [8],
        "weight_granularity": ["per-channel", "per-group"],
        "symmetric_weights": False,
        "activation_type": "int8",
        "format": "qdq",
        "float_types": ["float32", "float16"],
    },
    "sparsity": {"unstructured": "compute", "n_m": [[1, 4], [2, 4]], "channel_multiple": 4},
    "cost": {"model": "bops", "bops_per_second": 5.0e12},
}

_DELETE = object()


def _toml_value(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return json.dumps(value)  # JSON scalars and arrays are valid TOML values


def _toml(data: dict[str, Any]) -> str:
    """TOML text of ``data`` (top-level keys first, then one table per dict)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items() if not isinstance(value, dict)]
    for table, body in data.items():
        if isinstance(body, dict):
            lines.append(f"\n[{table}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in body.items())
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, data: dict[str, Any], name: str = "target.toml") -> Path:
    path = tmp_path / name
    path.write_text(_toml(data))
    return path


def _changed(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of the valid profile with the key at ``path`` set to ``value`` (or deleted)."""
    data = copy.deepcopy(_VALID)
    where = data
    for key in path[:-1]:
        where = where[key]
    if value is _DELETE:
        del where[path[-1]]
    else:
        where[path[-1]] = value
    return data


# --- built-in targets -----------------------------------------------------------------------------


def test_builtin_targets_are_cpu_gpu_vbit() -> None:
    assert builtin_targets() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_target_loads_under_its_own_name(name: str) -> None:
    target = load_target(name)
    assert isinstance(target, Target)
    assert target.name == name
    assert "built-in" in target.source


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_target_is_frozen_and_hashable(name: str) -> None:
    target = load_target(name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.quantize.weight_bits = (2,)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.cost.bops_per_second = 1.0  # type: ignore[misc]
    hash(target)  # every field is immutable (tuples, not lists)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_target_pipeline_parses(name: str) -> None:
    assert parse_pipeline(load_target(name).pipeline)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_to_toml_written_to_a_file_loads_back_equal(name: str, tmp_path: Path) -> None:
    target = load_target(name)
    path = tmp_path / f"{name}-copy.toml"
    path.write_text(target.to_toml())
    loaded = load_target(path)
    assert loaded == dataclasses.replace(target, source=str(path))


def test_user_to_toml_round_trips_every_field(tmp_path: Path) -> None:
    target = load_target(_write(tmp_path, _VALID))
    path = tmp_path / "copy.toml"
    path.write_text(target.to_toml())
    assert load_target(path) == dataclasses.replace(target, source=str(path))


def test_to_toml_round_trips_a_description_with_a_newline(tmp_path: Path) -> None:
    target = dataclasses.replace(load_target("cpu"), description="line one\nline two")
    path = tmp_path / "multi.toml"
    path.write_text(target.to_toml())
    assert load_target(path).description == "line one\nline two"


# --- user targets by path -------------------------------------------------------------------------


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "pathlib"])
def test_user_toml_loads_by_path(tmp_path: Path, as_path: bool) -> None:
    path = _write(tmp_path, _VALID)
    target = load_target(path if as_path else str(path))
    assert target == Target(
        name="edge-npu",
        description="a made-up accelerator",
        providers=("CPUExecutionProvider",),
        pipeline="eliminate-identity,eliminate-dead",
        quantize=QuantizeSpec(
            weight_bits=(4, 8),
            activation_bits=(8,),
            weight_granularity=("per-channel", "per-group"),
            symmetric_weights=False,
            activation_type="int8",
            format="qdq",
            float_types=("float32", "float16"),
        ),
        sparsity=SparsitySpec(unstructured="compute", n_m=((1, 4), (2, 4)), channel_multiple=4),
        cost=CostSpec(model="bops", bops_per_second=5.0e12),
        source=str(path),
    )


def test_user_toml_integer_bops_per_second_loads_as_float(tmp_path: Path) -> None:
    target = load_target(_write(tmp_path, _changed(("cost", "bops_per_second"), 3)))
    assert target.cost.bops_per_second == 3.0
    assert isinstance(target.cost.bops_per_second, float)


# --- errors that name the bad key -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        pytest.param(("cost",), _DELETE, "cost", id="missing-table"),
        pytest.param(("quantize", "weight_bits"), _DELETE, "quantize.weight_bits", id="missing-key-in-table"),
        pytest.param(("description",), _DELETE, "description", id="missing-top-level-key"),
        pytest.param(("colour",), "red", "colour", id="unknown-top-level-key"),
        pytest.param(("quantize", "weight_bitz"), [8], "quantize.weight_bitz", id="unknown-key-in-quantize"),
        pytest.param(("sparsity", "pattern"), "2:4", "sparsity.pattern", id="unknown-key-in-sparsity"),
        pytest.param(("cost", "watts"), 5, "cost.watts", id="unknown-key-in-cost"),
        pytest.param(("quantize",), 3, "quantize", id="table-is-a-number"),
        pytest.param(("quantize", "weight_bits"), "8", "quantize.weight_bits", id="string-for-list"),
        pytest.param(("providers",), "CPUExecutionProvider", "providers", id="string-for-providers-list"),
        pytest.param(("providers",), [], "providers", id="empty-providers"),
        pytest.param(("name",), 7, "name", id="number-for-string"),
        pytest.param(("quantize", "symmetric_weights"), 1, "quantize.symmetric_weights", id="number-for-boolean"),
        pytest.param(("cost", "bops_per_second"), True, "cost.bops_per_second", id="boolean-for-float"),
        pytest.param(("sparsity", "channel_multiple"), True, "sparsity.channel_multiple", id="boolean-for-int"),
        pytest.param(("quantize", "weight_bits"), [0], "quantize.weight_bits", id="bits-zero"),
        pytest.param(("quantize", "weight_bits"), [4, 17], "quantize.weight_bits", id="bits-above-16"),
        pytest.param(("quantize", "activation_bits"), [], "quantize.activation_bits", id="bits-empty"),
        pytest.param(("quantize", "activation_bits"), [True], "quantize.activation_bits", id="bits-boolean"),
        pytest.param(
            ("quantize", "weight_granularity"), ["per-row"], "quantize.weight_granularity", id="unknown-granularity"
        ),
        pytest.param(("quantize", "activation_type"), "fp8", "quantize.activation_type", id="unknown-activation-type"),
        pytest.param(("quantize", "format"), "qoperator", "quantize.format", id="unknown-format"),
        pytest.param(("quantize", "float_types"), ["float8"], "quantize.float_types", id="unknown-float-type"),
        pytest.param(("sparsity", "unstructured"), "some", "sparsity.unstructured", id="unknown-unstructured"),
        pytest.param(("sparsity", "n_m"), [[4, 2]], "sparsity.n_m", id="n_m-n-above-m"),
        pytest.param(("sparsity", "n_m"), [[0, 4]], "sparsity.n_m", id="n_m-n-zero"),
        pytest.param(("sparsity", "n_m"), [[2, 4, 8]], "sparsity.n_m", id="n_m-three-numbers"),
        pytest.param(("sparsity", "n_m"), [2, 4], "sparsity.n_m", id="n_m-not-nested"),
        pytest.param(("sparsity", "channel_multiple"), 0, "sparsity.channel_multiple", id="channel_multiple-zero"),
        pytest.param(("cost", "model"), "guess", "cost.model", id="unknown-cost-model"),
        pytest.param(("cost", "bops_per_second"), 0.0, "cost.bops_per_second", id="bops_per_second-zero"),
        pytest.param(("cost", "bops_per_second"), -1.0e12, "cost.bops_per_second", id="bops_per_second-negative"),
        pytest.param(("pipeline",), "eliminate-identity,no-such-pass", "pipeline", id="pipeline-unknown-pass"),
    ],
)
def test_invalid_user_toml_raises_target_error_naming_the_key(
    tmp_path: Path, path: tuple[str, ...], value: Any, key: str
) -> None:
    toml_path = _write(tmp_path, _changed(path, value))
    with pytest.raises(TargetError) as caught:
        load_target(toml_path)
    message = str(caught.value)
    assert f"'{key}'" in message
    assert str(toml_path) in message


def test_pipeline_error_names_the_unknown_pass_and_the_valid_ones(tmp_path: Path) -> None:
    toml_path = _write(tmp_path, _changed(("pipeline",), "no-such-pass"))
    with pytest.raises(TargetError, match="no-such-pass") as caught:
        load_target(toml_path)
    assert "eliminate-dead" in str(caught.value)


def test_unknown_key_error_lists_the_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="valid keys: .*weight_bits") as caught:
        load_target(_write(tmp_path, _changed(("quantize", "weight_bitz"), [8])))
    assert "'quantize.weight_bitz'" in str(caught.value)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_bops_per_second_raises_target_error(tmp_path: Path, value: float) -> None:
    with pytest.raises(TargetError, match="'cost.bops_per_second'"):
        load_target(_write(tmp_path, _changed(("cost", "bops_per_second"), value)))


def test_invalid_toml_syntax_raises_target_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "cpu"\nproviders = [\n')
    with pytest.raises(TargetError, match="invalid TOML") as caught:
        load_target(path)
    assert str(path) in str(caught.value)


def test_file_that_is_not_utf8_raises_target_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"name = \xff\xfe\n")
    with pytest.raises(TargetError, match="cannot read"):
        load_target(path)


def test_unknown_target_name_that_is_not_a_file_raises_target_error_listing_builtins() -> None:
    with pytest.raises(TargetError, match="unknown target 'tpu-v9'") as caught:
        load_target("tpu-v9")
    for name in BUILTINS:
        assert name in str(caught.value)


def test_folder_path_is_not_a_target(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="unknown target"):
        load_target(tmp_path)
