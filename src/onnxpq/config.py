"""Config files for build pipelines: ``onnxpq.toml`` (``--config``) or ``[tool.onnxpq]`` in ``pyproject.toml``.

A config holds the options of the commands that take one (``optimize``,
``package``, and any command module that declares ``CONFIG_SECTION``), under
their long option names::

    model = "models/resnet.onnx"        # top level: what the job works on
    target = "cpu"
    pipeline = "fold-batchnorm,quantize-static"
    data = "data/val.npz"
    calibration = "data/calib.npz"
    latency-runs = 20

    [gates]                              # every option named max-* / min-*
    max-accuracy-drop = 0.01

    [outputs]                            # output, report, html, dump-on-failure
    output = "build/resnet.opt.onnx"
    report = "build/report.json"
    html = "build/report.html"

    [package]                            # one table per command: its own options (flat, or in its own
    output = "build/bundle"              # [package.gates] / [package.outputs]), read after the shared
    tune-budget = 20                     # part (it wins)

Precedence: an option typed on the command line > the command's table > the
shared part > the option's default. "Typed" is detected generically (the CLI
parses the arguments a second time with every default suppressed), so typing
an option with its default value still overrides the config.

Without ``--config``, the nearest ``pyproject.toml`` from the current folder
upward is read; its ``[tool.onnxpq]`` table is the config when it has one (the
search stops at the first ``pyproject.toml``, like other Python tools).

Relative paths in a config resolve against the config file's folder; paths
typed on the command line stay relative to the current folder. An unknown key
is a :class:`ConfigError` (exit 2) that names it and lists the valid keys.

The keys, their kinds (flag, number, text, list) and choices come from the
commands' argparse parsers, so a new command-line option is a config key
with no change here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxpq.errors import OnnxpqError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "ConfigFile",
    "ConfigOption",
    "GATES",
    "OUTPUTS",
    "ORIGIN_COMMAND_LINE",
    "ORIGIN_DEFAULT",
    "config_options",
    "find_config",
    "format_merged",
    "read_config",
    "resolve_config",
    "table_of",
]

logger = logging.getLogger(__name__)

GATES = "gates"
OUTPUTS = "outputs"
#: Keys that live in the ``[outputs]`` table (gates are every ``max-*`` / ``min-*`` option).
OUTPUT_KEYS = ("output", "report", "html", "dump-on-failure")
#: Keys whose values are paths: relative ones resolve against the config file's folder.
PATH_KEYS = frozenset({"model", "data", "calibration", "reference", "verify", "out-dir", *OUTPUT_KEYS})
#: Options that never come from a config (logging, the config itself).
META_DESTS = frozenset({"help", "version", "debug", "verbose", "quiet", "config", "command"})

ORIGIN_COMMAND_LINE = "command line"
ORIGIN_DEFAULT = "default"

PYPROJECT = "pyproject.toml"


class ConfigError(OnnxpqError):
    """A config file is missing, not TOML, or holds an unknown key or a value of the wrong kind."""


@dataclass(frozen=True)
class ConfigFile:
    """A config's table of options and where it was read from."""

    path: Path
    table: dict[str, Any]
    #: ``[tool.onnxpq]`` for a pyproject.toml, "" for a plain config file.
    prefix: str = ""

    def where(self, table: str | None = None) -> str:
        """``path [tool.onnxpq.gates]``-style origin text for messages and ``config show``."""
        parts = [p for p in (self.prefix, table) if p]
        return f"{self.path} [{'.'.join(parts)}]" if parts else str(self.path)


@dataclass(frozen=True)
class ConfigOption:
    """One command-line option as a config key."""

    key: str
    dest: str
    kind: str  # "flag" | "count" | "value" | "list"
    action: argparse.Action

    @property
    def table(self) -> str | None:
        return table_of(self.key)

    @property
    def is_path(self) -> bool:
        return self.key in PATH_KEYS


def table_of(key: str) -> str | None:
    """The table a key belongs in: ``outputs``, ``gates`` or None (top level)."""
    if key in OUTPUT_KEYS:
        return OUTPUTS
    if key.startswith(("max-", "min-")):
        return GATES
    return None


def config_options(parser: argparse.ArgumentParser) -> dict[str, ConfigOption]:
    """The config keys of a command's parser: long option names (positionals by dest), in parser order."""
    options: dict[str, ConfigOption] = {}
    for action in parser._actions:  # argparse has no public accessor for its actions
        if action.dest in META_DESTS or action.dest == argparse.SUPPRESS:
            continue
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        longs = [s for s in action.option_strings if s.startswith("--")]
        key = longs[0][2:] if longs else action.dest.replace("_", "-")
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)):
            kind = "flag"
        elif isinstance(action, argparse._CountAction):
            kind = "count"
        elif action.nargs in ("*", "+") or isinstance(action.nargs, int) or isinstance(action, argparse._AppendAction):
            kind = "list"
        else:
            kind = "value"
        options[key] = ConfigOption(key, action.dest, kind, action)
    return options


def find_config(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` from ``start`` (the current folder) upward, if it has ``[tool.onnxpq]``."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        path = candidate / PYPROJECT
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                logger.warning("%s: not read for [tool.onnxpq] (%s)", path, exc)
                return None
            found = isinstance(data.get("tool"), dict) and "onnxpq" in data["tool"]
            logger.debug("%s: %s", path, "has [tool.onnxpq]" if found else "no [tool.onnxpq]: no config")
            return path if found else None
    return None


def read_config(path: str | Path) -> ConfigFile:
    """Read ``path``: a ``pyproject.toml`` gives its ``[tool.onnxpq]`` table, any other file the whole document."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path}: no such file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path}: cannot read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: invalid TOML ({exc})") from exc
    if path.name == PYPROJECT:
        table = data.get("tool", {}).get("onnxpq") if isinstance(data.get("tool"), dict) else None
        if not isinstance(table, dict):
            raise ConfigError(f"config {path}: no [tool.onnxpq] table")
        return ConfigFile(path.resolve(), table, "tool.onnxpq")
    return ConfigFile(path.resolve(), data)


@dataclass(frozen=True)
class ConfiguredValue:
    """A value from the config, converted for argparse, and the table it came from."""

    value: Any
    origin: str


def _valid_list(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def _convert_one(option: ConfigOption, value: Any, where: str, folder: Path) -> Any:
    action = option.action
    convert: Callable[[Any], Any] | None = action.type if callable(action.type) else None
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: must be {_kind_text(option)}, got {_toml_kind(value)}")
    if convert in (int, float):
        if not isinstance(value, (int, float)) or (convert is int and not isinstance(value, int)):
            raise ConfigError(f"{where}: must be {_kind_text(option)}, got {_toml_kind(value)}")
        value = convert(value)
    elif convert is not None and isinstance(value, str):
        try:
            value = convert(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"{where}: invalid value {value!r} ({exc})") from exc
    elif not isinstance(value, str):
        raise ConfigError(f"{where}: must be {_kind_text(option)}, got {_toml_kind(value)}")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    if option.is_path or (option.key == "target" and _looks_like_path(value)):
        value = _resolve_path(value, folder)
    return value


def _looks_like_path(value: Any) -> bool:
    return isinstance(value, str) and (value.endswith(".toml") or "/" in value or "\\" in value)


def _resolve_path(value: str, folder: Path) -> str:
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else folder / path)


def _kind_text(option: ConfigOption) -> str:
    convert = option.action.type
    if option.kind == "flag":
        return "true or false"
    if option.kind == "count" or convert is int:
        return "an integer"
    if convert is float:
        return "a number"
    if option.kind == "list":
        return "a list"
    return "a string"


def _toml_kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _convert(option: ConfigOption, value: Any, where: str, folder: Path) -> Any:
    """A config value as argparse would have stored it for that option."""
    action = option.action
    if option.kind == "flag":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {_toml_kind(value)}")
        return action.const if value else action.default
    if option.kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: must be a non-negative integer")
        return value
    if option.kind == "list":
        items = value if isinstance(value, list) else None
        if items is None:
            raise ConfigError(f"{where}: must be a list, got {_toml_kind(value)}")
        return [_convert_one(option, item, where, folder) for item in items]
    return _convert_one(option, value, where, folder)


def _collect(
    config: ConfigFile,
    table: Mapping[str, Any],
    section: str | None,
    allowed: Mapping[str, ConfigOption],
    sections: Iterable[str],
    folder: Path,
    into: dict[str, ConfiguredValue],
) -> None:
    """Check and convert one level (the shared part, or a command's table) into ``into`` (key -> value)."""
    section_names = set(sections)
    # a command's table may hold its gates and outputs flat too (it is short); the shared part keeps the layout
    top_keys = set(allowed) if section is not None else {k for k, o in allowed.items() if o.table is None}
    for key, value in table.items():
        if key in (GATES, OUTPUTS):
            if not isinstance(value, dict):
                raise ConfigError(f"{config.where(section)}: '{key}' must be a table ([{key}])")
            sub = ".".join(p for p in (section, key) if p)
            valid = {k for k, o in allowed.items() if o.table == key}
            for inner, inner_value in value.items():
                if inner not in valid:
                    raise ConfigError(_unknown(config, sub, inner, valid, allowed))
                where = f"{config.where(sub)}: '{inner}'"
                into[inner] = ConfiguredValue(_convert(allowed[inner], inner_value, where, folder), config.where(sub))
            continue
        if section is None and key in section_names:
            continue  # a command's table: read by the caller
        if key not in top_keys:
            raise ConfigError(_unknown(config, section, key, top_keys | {GATES, OUTPUTS} | (
                section_names if section is None else set()), allowed))
        where = f"{config.where(section)}: '{key}'"
        into[key] = ConfiguredValue(_convert(allowed[key], value, where, folder), config.where(section))


def _unknown(config: ConfigFile, table: str | None, key: str, valid: set[str],
             allowed: Mapping[str, ConfigOption]) -> str:
    hint = ""
    if key in allowed:  # a real option in the wrong place
        home = allowed[key].table
        hint = f"; it belongs in [{home}]" if home else "; it belongs outside [gates] and [outputs]"
    return f"config {config.where(table)}: unknown key '{key}'{hint}; valid keys: {_valid_list(valid)}"


def resolve_config(
    config: ConfigFile,
    section: str,
    commands: Mapping[str, Mapping[str, ConfigOption]],
) -> dict[str, ConfiguredValue]:
    """The config's values for the command of ``section``: key -> value converted for argparse.

    Args:
        config: the file read by :func:`read_config`.
        section: the command's table name (``optimize``, ``package``, ...).
        commands: every config-taking command's table name -> its options; the
            shared part may hold any of their keys (a key another command uses
            is accepted and left out for this one).

    Raises:
        ConfigError: an unknown key (named, with the valid ones), a value of
            the wrong kind, or a command table that is not a table.
    """
    folder = config.path.parent
    union: dict[str, ConfigOption] = {}
    for options in commands.values():
        for key, option in options.items():
            union.setdefault(key, option)
    shared: dict[str, ConfiguredValue] = {}
    _collect(config, config.table, None, union, commands, folder, shared)
    own = commands[section]
    merged = {k: v for k, v in shared.items() if k in own}
    skipped = sorted(set(shared) - set(own))
    if skipped:
        logger.debug("config %s: not options of '%s', left out: %s", config.path, section, ", ".join(skipped))
    table = config.table.get(section)
    if table is not None:
        if not isinstance(table, dict):
            raise ConfigError(f"config {config.where()}: '{section}' must be a table ([{section}])")
        _collect(config, table, section, own, (), folder, merged)
    for other in commands:
        value = config.table.get(other)
        if other != section and value is not None and isinstance(value, dict):
            _collect(config, value, other, commands[other], (), folder, {})  # its typos are errors too
    return merged


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # JSON string escapes are valid TOML basic-string escapes


def format_merged(
    options: Mapping[str, ConfigOption],
    values: Mapping[str, Any],
    origins: Mapping[str, str],
    *,
    header: str = "",
) -> str:
    """The merged options as TOML (the config layout), each line commented with where its value came from.

    An option without a value (None) is a comment: TOML has no null.
    """
    groups: dict[str | None, list[tuple[str, str]]] = {None: [], GATES: [], OUTPUTS: []}
    for key, option in options.items():
        value = values.get(option.dest)
        line = f"# {key} = (not set)" if value is None else f"{key} = {_toml_value(value)}"
        groups[option.table].append((line, origins.get(option.dest, ORIGIN_DEFAULT)))
    width = max((len(line) for rows in groups.values() for line, _ in rows), default=0)
    lines = [f"# {header}"] if header else []
    for table, rows in groups.items():
        if not rows:
            continue
        if table is not None:
            lines.append(f"\n[{table}]")
        lines.extend(f"{line:{width}}  # {origin}" for line, origin in rows)
    return "\n".join(lines) + "\n"
