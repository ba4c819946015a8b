"""The pass registry (kebab-case name -> pass class) and the plugins that extend it.

Built-in passes register when :mod:`onnxpq.passes` is imported; the registry
imports it lazily so that ``core`` does not depend on ``passes`` at import time.

Plugins are installed distributions that declare entry points:

* group ``onnxpq.passes``: each entry point loads to an :class:`OnnxpqPass`
  subclass (registered under its ``name``), or to a module whose import
  registers its passes with :func:`register_pass`;
* group ``onnxpq.targets``: the entry point's name is the target name (for
  ``-t NAME``); it loads to a path of a TOML profile (``str`` or
  ``os.PathLike``), or to a callable returning one.

A broken plugin (it does not import, gives the wrong kind of object, reuses a
taken name, points to a missing file) is logged as a WARNING naming the entry
point and skipped: it never stops the tool. Built-ins always win a name
clash. Plugins are looked up once per process (``importlib.metadata``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from onnxpq.core.pass_base import OnnxpqPass, option_specs
from onnxpq.errors import PipelineError

__all__ = [
    "PASS_GROUP",
    "TARGET_GROUP",
    "PluginTarget",
    "get_pass_class",
    "pass_origin",
    "plugin_target_paths",
    "register_pass",
    "registered_passes",
]

logger = logging.getLogger(__name__)

#: Entry-point group of third-party passes.
PASS_GROUP = "onnxpq.passes"
#: Entry-point group of third-party targets.
TARGET_GROUP = "onnxpq.targets"

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_REGISTRY: dict[str, type[OnnxpqPass]] = {}
#: Pass name -> "plugin <distribution>" for passes that came from a plugin.
_ORIGINS: dict[str, str] = {}
#: Non-empty once the pass plugins were looked up (a list, so that no ``global`` statement is needed).
_PLUGINS_LOADED: list[bool] = []

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


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    """The installed entry points of ``group``, by name; an unreadable installation is a warning, not an error."""
    try:
        found = metadata.entry_points(group=group)
    except Exception as exc:  # noqa: BLE001 - broken distribution metadata must not stop the tool
        logger.warning("cannot read the installed plugins of '%s': %s: %s", group, type(exc).__name__, exc)
        return []
    unique = {(ep.name, ep.value): ep for ep in found}  # a path on sys.path twice lists a distribution twice
    return sorted(unique.values(), key=lambda ep: (ep.name, ep.value))


def _describe(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return f"plugin {name}" if name else f"plugin {ep.value}"


def _register_plugin_pass(ep: metadata.EntryPoint) -> None:
    before = set(_REGISTRY)
    loaded = ep.load()
    if isinstance(loaded, ModuleType):
        added = sorted(set(_REGISTRY) - before)
        if not added:
            raise TypeError(f"module {loaded.__name__} registered no pass")
    elif isinstance(loaded, type) and issubclass(loaded, OnnxpqPass):
        register_pass(loaded)
        added = sorted((set(_REGISTRY) - before) | {loaded.name})
    else:
        raise TypeError(f"loads to {type(loaded).__name__}, not an OnnxpqPass subclass or a module")
    for name in added:
        _ORIGINS.setdefault(name, _describe(ep))
    logger.debug("%s: registered %s", _describe(ep), ", ".join(added))


def _load_pass_plugins() -> None:
    """Register the passes of every ``onnxpq.passes`` entry point, once; a broken one is a WARNING."""
    _load_builtins()
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED.append(True)  # before loading: a plugin that asks for the registry on import must not recurse
    for ep in _entry_points(PASS_GROUP):
        try:
            _register_plugin_pass(ep)
        except Exception as exc:  # noqa: BLE001 - a broken plugin never crashes the tool
            logger.warning(
                "skipping the broken pass plugin '%s' (%s): %s: %s", ep.name, ep.value, type(exc).__name__, exc
            )


def registered_passes() -> dict[str, type[OnnxpqPass]]:
    """All registered passes (built-ins and plugins), sorted by name."""
    _load_pass_plugins()
    return dict(sorted(_REGISTRY.items()))


def pass_origin(name: str) -> str:
    """Where a registered pass comes from: ``built-in`` or ``plugin <distribution>``."""
    _load_pass_plugins()
    return _ORIGINS.get(name, "built-in")


def get_pass_class(name: str) -> type[OnnxpqPass]:
    """The pass class registered under ``name``; PipelineError listing valid names otherwise."""
    passes = registered_passes()
    try:
        return passes[name]
    except KeyError:
        raise PipelineError(f"unknown pass '{name}'; valid passes: {', '.join(passes)}") from None


@dataclass(frozen=True)
class PluginTarget:
    """A target profile offered by a plugin: its ``-t`` name, TOML path and where it came from."""

    name: str
    path: Path
    origin: str


def _plugin_target(ep: metadata.EntryPoint) -> PluginTarget:
    if not _NAME.match(ep.name):
        raise ValueError(f"target name '{ep.name}' is not kebab-case")
    loaded: Any = ep.load()
    if callable(loaded):
        loaded = loaded()
    if not isinstance(loaded, (str, os.PathLike)):
        raise TypeError(f"gives {type(loaded).__name__}, not a path to a TOML profile")
    path = Path(loaded)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return PluginTarget(ep.name, path, _describe(ep))


@functools.cache
def plugin_target_paths() -> dict[str, PluginTarget]:
    """Target name -> :class:`PluginTarget` for every working ``onnxpq.targets`` entry point (looked up once).

    Only the entry point is checked here (it loads, gives an existing file);
    :func:`onnxpq.targets.profile.plugin_targets` parses the profiles.
    """
    found: dict[str, PluginTarget] = {}
    for ep in _entry_points(TARGET_GROUP):
        try:
            target = _plugin_target(ep)
        except Exception as exc:  # noqa: BLE001 - a broken plugin never crashes the tool
            logger.warning(
                "skipping the broken target plugin '%s' (%s): %s: %s", ep.name, ep.value, type(exc).__name__, exc
            )
            continue
        if target.name in found:
            logger.warning("skipping the target plugin '%s' (%s): the name is taken by %s", ep.name, ep.value,
                           found[target.name].origin)
            continue
        found[target.name] = target
    return found
