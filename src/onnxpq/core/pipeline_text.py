"""Pipeline text: ``name,name{key=value,key=[a,b]}``.

Grammar (whitespace around tokens is ignored)::

    pipeline := pass ("," pass)*
    pass     := NAME ["{" option ("," option)* "}"]
    option   := KEY "=" value
    value    := scalar | "[" [scalar ("," scalar)*] "]"

Values are converted by the option's annotated type (``int``, ``float``,
``bool`` as ``true``/``false``, ``str``, ``Literal[...]``, ``X | None`` with
``none``, ``tuple[T, ...]`` as a bracketed list). :func:`format_pipeline`
writes the canonical text — options in signature order, those equal to their
default left out unless ``full=True`` — and ``parse_pipeline(format_pipeline(p))``
gives passes equal to ``p``; canonical text formats back to itself.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from onnxpq.core.pass_base import OnnxpqPass, OptionSpec, option_specs
from onnxpq.core.registry import get_pass_class
from onnxpq.errors import PipelineError

__all__ = ["parse_pipeline", "format_pipeline", "format_pass", "parse_value", "format_value", "parse_node_values"]

_SCALAR = re.compile(r"^[A-Za-z0-9_.+\-/:*]+$")


def _split_top(text: str, sep: str, context: str) -> list[str]:
    """Split on ``sep`` outside braces and brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"{context}: unbalanced '{ch}' at position {i}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise PipelineError(f"{context}: unclosed '{{' or '['")
    parts.append(text[start:])
    return parts


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def parse_value(spec: OptionSpec, text: str, pass_name: str) -> Any:
    """Convert option text to the option's annotated type, or raise PipelineError."""
    where = f"{pass_name}: option '{spec.name}'"
    annotation, optional = _unwrap_optional(spec.annotation)
    text = text.strip()
    if optional and text == "none":
        return None
    origin = typing.get_origin(annotation)
    if origin in (tuple, list):
        if not (text.startswith("[") and text.endswith("]")):
            raise PipelineError(f"{where} expects a list like [a,b], got '{text}'")
        inner = text[1:-1].strip()
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        item = OptionSpec(spec.name, args[0] if args else str, None)
        items = [] if not inner else [parse_value(item, part, pass_name) for part in _split_top(inner, ",", where)]
        return tuple(items)
    if not _SCALAR.match(text):
        raise PipelineError(f"{where}: '{text}' is not a valid value")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        for choice in choices:
            if str(choice) == text or (isinstance(choice, bool) and text == str(choice).lower()):
                return choice
        raise PipelineError(f"{where} must be one of {', '.join(map(str, choices))}; got '{text}'")
    if annotation is bool:
        if text in ("true", "false"):
            return text == "true"
        raise PipelineError(f"{where} expects true or false, got '{text}'")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise PipelineError(f"{where} expects an integer, got '{text}'") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise PipelineError(f"{where} expects a number, got '{text}'") from None
    if annotation is str:
        return text
    raise PipelineError(f"{where}: options of type {spec.type_text} cannot be set from text")


def parse_node_values(
    items: Sequence[str],
    *,
    where: str,
    kind: type,
    check: Callable[[Any], bool],
    expected: str,
    form: str = "name:value",
) -> dict[str, Any]:
    """Per-node overrides written ``name:value`` (``per_node=[conv1:0.2,fc2:0]``) as {name: value}.

    ``where`` names the pass and option in errors, ``kind`` converts the text
    (int or float), ``check`` validates the value and ``expected`` says what is
    valid. A node given two different values is an error.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        name, sep, text = str(item).rpartition(":")
        if not sep or not name:
            raise PipelineError(f"{where}: item {item!r} must be written {form}")
        try:
            value = kind(text)
        except ValueError:
            raise PipelineError(f"{where}: item {item!r}: '{text}' is not {'an integer' if kind is int else 'a number'}") from None
        if not check(value):
            raise PipelineError(f"{where}: item {item!r}: the value must be {expected}")
        if name in parsed and parsed[name] != value:
            raise PipelineError(f"{where}: node '{name}' is given two values")
        parsed[name] = value
    return parsed


def format_value(value: Any) -> str:
    """Text of an option value, the inverse of :func:`parse_value`."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _parse_pass(text: str) -> OnnxpqPass:
    text = text.strip()
    if not text:
        raise PipelineError("empty pass name in pipeline (a stray ',')")
    brace = text.find("{")
    if brace == -1:
        name, body = text, None
    else:
        if not text.endswith("}"):
            raise PipelineError(f"'{text}': options must end with '}}'")
        name, body = text[:brace].strip(), text[brace + 1 : -1]
    cls = get_pass_class(name)
    specs = {spec.name: spec for spec in option_specs(cls)}
    kwargs: dict[str, Any] = {}
    if body is not None and body.strip():
        for item in _split_top(body, ",", name):
            key, eq, raw = item.partition("=")
            key = key.strip()
            if not eq:
                raise PipelineError(f"{name}: option '{item.strip()}' must be written key=value")
            if key not in specs:
                valid = ", ".join(f"{s.name}: {s.type_text}" for s in specs.values()) or "none"
                raise PipelineError(f"{name}: unknown option '{key}'; valid options: {valid}")
            if key in kwargs:
                raise PipelineError(f"{name}: option '{key}' given twice")
            kwargs[key] = parse_value(specs[key], raw, name)
    try:
        return cls(**kwargs)
    except PipelineError:
        raise
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{name}: {exc}") from exc


def parse_pipeline(text: str) -> list[OnnxpqPass]:
    """Parse pipeline text into pass instances (PipelineError on any mistake)."""
    if not text or not text.strip():
        raise PipelineError("the pipeline is empty; name at least one pass (see `onnxpq passes`)")
    return [_parse_pass(part) for part in _split_top(text, ",", "pipeline")]


def format_pass(pass_: OnnxpqPass, *, full: bool = False) -> str:
    """Canonical text of one pass."""
    options = []
    for spec in option_specs(type(pass_)):
        value = getattr(pass_, spec.name)
        if full or value != spec.default:
            options.append(f"{spec.name}={format_value(value)}")
    return pass_.name + ("{" + ",".join(options) + "}" if options else "")


def format_pipeline(passes: Sequence[OnnxpqPass], *, full: bool = False) -> str:
    """Canonical pipeline text; ``full=True`` writes every option, defaults included."""
    return ",".join(format_pass(p, full=full) for p in passes)
