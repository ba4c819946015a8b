"""The pass registry: kebab-case name -> pass class.

Built-in passes register when :mod:`onnxpq.passes` is imported; the registry
imports it lazily so that ``core`` does not depend on ``passes`` at import time.
"""

from __future__ import annotations

import re
from typing import TypeVar

from onnxpq.core.pass_base import OnnxpqPass, option_specs
from onnxpq.errors import PipelineError

__all__ = ["register_pass", "get_pass_class", "registered_passes"]

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_REGISTRY: dict[str, type[OnnxpqPass]] = {}

P = TypeVar("P", bound=type[OnnxpqPass])


def register_pass(cls: P) -> P:
    """Class decorator: register a pass under its ``name`` (kebab-case, unique)."""
    if not _NAME.match(cls.name):
        raise ValueError(f"{cls.__name__}: pass name '{cls.name}' is not kebab-case")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"pass name '{cls.name}' is registered twice ({existing.__name__}, {cls.__name__})")
    option_specs(cls)  # fail early on options without defaults
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins() -> None:
    import onnxpq.passes  # noqa: F401  (registers the built-in passes)


def registered_passes() -> dict[str, type[OnnxpqPass]]:
    """All registered passes, sorted by name."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get_pass_class(name: str) -> type[OnnxpqPass]:
    """The pass class registered under ``name``; PipelineError listing valid names otherwise."""
    passes = registered_passes()
    try:
        return passes[name]
    except KeyError:
        raise PipelineError(f"unknown pass '{name}'; valid passes: {', '.join(passes)}") from None
