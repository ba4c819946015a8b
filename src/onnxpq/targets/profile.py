"""Target profiles: what a piece of hardware can exploit and what it costs.

A target is a TOML file (the built-ins sit beside this module; a user passes
a path to their own) loaded into the frozen :class:`Target`. Every key is
validated; a wrong or unknown key raises :class:`TargetError` naming it.

Schema (all tables required, defaults in brackets)::

    name, description, providers = [...], pipeline = "pass,pass{k=v}"
    [quantize]  weight_bits = [8]  activation_bits = [8]
                weight_granularity = ["per-channel"|"per-tensor"|"per-group"]
                symmetric_weights = true  activation_type = "uint8"|"int8"
                format = "qdq"  float_types = ["float32", "float16", "bfloat16"]
    [sparsity]  unstructured = "none"|"storage"|"compute"  n_m = [[2, 4]]
                channel_multiple = 1
    [cost]      model = "measured"|"bops"|"macs"|"weight_memory"  bops_per_second = 1e12
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from onnxpq.errors import TargetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Target", "QuantizeSpec", "SparsitySpec", "CostSpec", "load_target", "builtin_targets", "plugin_targets",
    "target_names",
]

logger = logging.getLogger(__name__)

_GRANULARITIES = ("per-tensor", "per-channel", "per-group")
_ACTIVATION_TYPES = ("uint8", "int8")
_FORMATS = ("qdq",)
_FLOAT_TYPES = ("float32", "float16", "bfloat16")
_UNSTRUCTURED = ("none", "storage", "compute")
_COST_MODELS = ("measured", "bops", "macs", "weight_memory")  # the per-layer models of analysis.cost_models


@dataclass(frozen=True)
class QuantizeSpec:
    """What quantization the hardware runs."""

    weight_bits: tuple[int, ...] = (8,)
    activation_bits: tuple[int, ...] = (8,)
    weight_granularity: tuple[str, ...] = ("per-channel",)
    symmetric_weights: bool = True
    activation_type: str = "uint8"
    format: str = "qdq"
    float_types: tuple[str, ...] = ("float32",)


@dataclass(frozen=True)
class SparsitySpec:
    """What sparsity the hardware exploits: unstructured zeros, N:M patterns, channel counts."""

    unstructured: str = "none"
    n_m: tuple[tuple[int, int], ...] = ()
    channel_multiple: int = 1


@dataclass(frozen=True)
class CostSpec:
    """How cost is figured: measured latency, bit-operations or MACs."""

    model: str = "measured"
    bops_per_second: float = 1e12


@dataclass(frozen=True)
class Target:
    """A hardware target profile."""

    name: str
    description: str
    providers: tuple[str, ...]
    pipeline: str
    quantize: QuantizeSpec = field(default_factory=QuantizeSpec)
    sparsity: SparsitySpec = field(default_factory=SparsitySpec)
    cost: CostSpec = field(default_factory=CostSpec)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for reports and ``onnxpq targets show``)."""
        return asdict(self)

    def to_toml(self) -> str:
        """The profile as TOML text (the same schema it loads from)."""

        def value(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, (int, float)):
                return repr(v)
            if isinstance(v, str):
                return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
            return "[" + ", ".join(value(x) for x in v) + "]"

        lines = [f"{k} = {value(getattr(self, k))}" for k in ("name", "description", "providers", "pipeline")]
        for table in ("quantize", "sparsity", "cost"):
            lines.append(f"\n[{table}]")
            lines.extend(f"{k} = {value(v)}" for k, v in asdict(getattr(self, table)).items())
        return "\n".join(lines) + "\n"


def _where(source: str, key: str) -> str:
    return f"target {source}: '{key}'"


def _expect(data: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str, prefix: str = "") -> Any:
    full = prefix + key
    if key not in data:
        raise TargetError(f"{_where(source, full)} is missing")
    value = data[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise TargetError(f"{_where(source, full)} must be a number, not a boolean")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise TargetError(f"{_where(source, full)} must be {names}, got {type(value).__name__}")
    return value


def _choices(values: list[Any], allowed: tuple[str, ...], key: str, source: str) -> tuple[str, ...]:
    for v in values:
        if v not in allowed:
            raise TargetError(f"{_where(source, key)}: '{v}' is not one of {', '.join(allowed)}")
    return tuple(values)


def _check_unknown(data: dict[str, Any], known: set[str], source: str, prefix: str = "") -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise TargetError(
            f"{_where(source, prefix + unknown[0])} is not a known key; valid keys: {', '.join(sorted(known))}"
        )


def _bits(data: dict[str, Any], key: str, source: str) -> tuple[int, ...]:
    values = _expect(data, key, list, source, "quantize.")
    if not values or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 16 for b in values):
        raise TargetError(f"{_where(source, 'quantize.' + key)} must be a non-empty list of integers in 1..16")
    return tuple(values)


def _parse(data: dict[str, Any], source: str) -> Target:
    tables = {"quantize", "sparsity", "cost"}
    _check_unknown(data, {"name", "description", "providers", "pipeline"} | tables, source)
    name = _expect(data, "name", str, source)
    description = _expect(data, "description", str, source)
    providers = _expect(data, "providers", list, source)
    if not providers or not all(isinstance(p, str) for p in providers):
        raise TargetError(f"{_where(source, 'providers')} must be a non-empty list of provider names")
    pipeline = _expect(data, "pipeline", str, source)
    for table in tables:
        _expect(data, table, dict, source)

    q = data["quantize"]
    q_fields = set(QuantizeSpec.__dataclass_fields__)
    _check_unknown(q, q_fields, source, "quantize.")
    quantize = QuantizeSpec(
        weight_bits=_bits(q, "weight_bits", source),
        activation_bits=_bits(q, "activation_bits", source),
        weight_granularity=_choices(
            _expect(q, "weight_granularity", list, source, "quantize."), _GRANULARITIES,
            "quantize.weight_granularity", source,
        ),
        symmetric_weights=_expect(q, "symmetric_weights", bool, source, "quantize."),
        activation_type=_choices(
            [_expect(q, "activation_type", str, source, "quantize.")], _ACTIVATION_TYPES,
            "quantize.activation_type", source,
        )[0],
        format=_choices([_expect(q, "format", str, source, "quantize.")], _FORMATS, "quantize.format", source)[0],
        float_types=_choices(
            _expect(q, "float_types", list, source, "quantize."), _FLOAT_TYPES, "quantize.float_types", source
        ),
    )

    s = data["sparsity"]
    _check_unknown(s, set(SparsitySpec.__dataclass_fields__), source, "sparsity.")
    n_m_raw = _expect(s, "n_m", list, source, "sparsity.")
    n_m = []
    for pair in n_m_raw:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
            or not 0 < pair[0] < pair[1]
        ):
            raise TargetError(f"{_where(source, 'sparsity.n_m')}: each entry must be [N, M] with 0 < N < M")
        n_m.append((pair[0], pair[1]))
    multiple = _expect(s, "channel_multiple", int, source, "sparsity.")
    if multiple < 1:
        raise TargetError(f"{_where(source, 'sparsity.channel_multiple')} must be >= 1")
    sparsity = SparsitySpec(
        unstructured=_choices(
            [_expect(s, "unstructured", str, source, "sparsity.")], _UNSTRUCTURED, "sparsity.unstructured", source
        )[0],
        n_m=tuple(n_m),
        channel_multiple=multiple,
    )

    c = data["cost"]
    _check_unknown(c, set(CostSpec.__dataclass_fields__), source, "cost.")
    bops_per_second = float(_expect(c, "bops_per_second", (int, float), source, "cost."))
    if not math.isfinite(bops_per_second) or bops_per_second <= 0:
        raise TargetError(f"{_where(source, 'cost.bops_per_second')} must be a positive finite number")
    cost = CostSpec(
        model=_choices([_expect(c, "model", str, source, "cost.")], _COST_MODELS, "cost.model", source)[0],
        bops_per_second=bops_per_second,
    )
    target = Target(name, description, tuple(providers), pipeline, quantize, sparsity, cost, source)
    _check_pipeline(target)
    return target


def _check_pipeline(target: Target) -> None:
    from onnxpq.core.pipeline_text import parse_pipeline
    from onnxpq.errors import PipelineError

    try:
        parse_pipeline(target.pipeline)
    except PipelineError as exc:
        raise TargetError(f"{_where(target.source, 'pipeline')}: {exc}") from exc


def builtin_targets() -> list[str]:
    """Names of the built-in targets."""
    folder = resources.files("onnxpq.targets")
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


@functools.cache
def plugin_targets() -> dict[str, Target]:
    """Targets installed by plugins (entry-point group ``onnxpq.targets``), by name.

    A plugin target whose profile does not load, or whose name is a built-in's,
    is a WARNING naming it and is left out (see :mod:`onnxpq.core.registry`).
    """
    from onnxpq.core.registry import plugin_target_paths

    builtins = set(builtin_targets())
    found: dict[str, Target] = {}
    for name, entry in plugin_target_paths().items():
        if name in builtins:
            logger.warning("skipping the target plugin '%s' (%s): '%s' is a built-in target", name, entry.origin, name)
            continue
        try:
            found[name] = _parse(_read_toml(entry.path.read_text(), f"'{name}' ({entry.origin})"),
                                 f"'{name}' ({entry.origin})")
        except (TargetError, OSError, UnicodeDecodeError) as exc:
            logger.warning("skipping the broken target plugin '%s': %s", name, exc)
    return found


def target_names() -> list[str]:
    """Names ``-t`` accepts besides paths: the built-ins, then the plugins' targets."""
    return builtin_targets() + sorted(plugin_targets())


def _read_toml(raw: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"target {source}: invalid TOML ({exc})") from exc


def load_target(name_or_path: str | Path) -> Target:
    """A built-in target by name (``cpu``, ``gpu``, ``vbit``), a plugin's target by name, or a TOML file by path."""
    text = str(name_or_path)
    if text in builtin_targets():
        source = f"'{text}' (built-in)"
        raw = resources.files("onnxpq.targets").joinpath(f"{text}.toml").read_text()
    elif text in plugin_targets():
        return plugin_targets()[text]
    else:
        path = Path(text)
        if not path.is_file():
            raise TargetError(
                f"unknown target '{text}': not a known target ({', '.join(target_names())}) and no such file"
            )
        source = str(path)
        try:
            raw = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise TargetError(f"target {source}: cannot read ({exc})") from exc
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"target {source}: invalid TOML ({exc})") from exc
    return _parse(data, source)
