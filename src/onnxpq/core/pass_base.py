"""The base class of onnxpq passes and how their options are described.

A pass is an ``onnx_ir.passes.InPlacePass`` with a registered kebab-case
``name``, a flag saying whether it is ``exact`` (outputs must not change beyond
float tolerance; the pass manager checks it numerically) or lossy, and the
analyses it keeps valid when it modifies the model (``preserves``). Its
options are its keyword constructor arguments, typed, with defaults; each is
stored on the instance under the same name so the pipeline text can be
written back exactly.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import onnx_ir as ir

__all__ = ["OnnxpqPass", "OptionSpec", "option_specs"]


@dataclass(frozen=True)
class OptionSpec:
    """One pass option: its name, annotated type and default."""

    name: str
    annotation: Any
    default: Any

    @property
    def type_text(self) -> str:
        """Human-readable type, e.g. ``int``, ``'l1' | 'l2'``, ``list[str]``."""
        origin = typing.get_origin(self.annotation)
        if origin is typing.Literal:
            return " | ".join(repr(a) for a in typing.get_args(self.annotation))
        if origin in (tuple, list):
            args = [a for a in typing.get_args(self.annotation) if a is not Ellipsis]
            inner = args[0].__name__ if args else "str"
            return f"list[{inner}]"
        return getattr(self.annotation, "__name__", str(self.annotation))


def option_specs(cls: type) -> tuple[OptionSpec, ...]:
    """The options of a pass class, read from its ``__init__`` signature and type hints."""
    signature = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__)
    specs = []
    for param in list(signature.parameters.values())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is inspect.Parameter.empty:
            raise TypeError(f"{cls.__name__}: option '{param.name}' needs a default")
        specs.append(OptionSpec(param.name, hints.get(param.name, type(param.default)), param.default))
    return tuple(specs)


class OnnxpqPass(ir.passes.InPlacePass):
    """Base of every registered onnxpq pass.

    Subclasses set ``name``, ``exact`` and optionally ``preserves``, take their
    options as keyword arguments with defaults, store each as ``self.<option>``,
    and implement ``call(model) -> PassResult`` with an exact ``modified`` flag.
    """

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = False
    preserves: ClassVar[tuple[type, ...]] = ()

    def options(self) -> dict[str, Any]:
        """Current option values, in signature order."""
        return {spec.name: getattr(self, spec.name) for spec in option_specs(type(self))}

    @classmethod
    def summary(cls) -> str:
        """First line of the docstring."""
        return (inspect.getdoc(cls) or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.options() == other.options()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted((k, repr(v)) for k, v in self.options().items()))))

    def __repr__(self) -> str:
        from onnxpq.core.pipeline_text import format_pass

        return f"<{type(self).__name__} {format_pass(self)}>"
