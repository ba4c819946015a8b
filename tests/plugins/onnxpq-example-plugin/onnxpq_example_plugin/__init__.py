"""An example onnxpq plugin: the ``example-doc-string`` pass and the ``example-cpu`` target."""

from __future__ import annotations

from pathlib import Path

import onnx_ir as ir

from onnxpq.core.pass_base import OnnxpqPass

__all__ = ["DocStringPass", "target_path", "missing_target_path"]


class DocStringPass(OnnxpqPass):
    """Set the main graph's doc string (exact: the numerics do not change)."""

    name = "example-doc-string"
    exact = True

    def __init__(self, text: str = "tagged by example-doc-string") -> None:
        self.text = text

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = model.graph.doc_string != self.text
        model.graph.doc_string = self.text
        return ir.passes.PassResult(model, modified)


def target_path() -> Path:
    """The example target's TOML profile."""
    return Path(__file__).with_name("example-cpu.toml")


def missing_target_path() -> Path:
    """A broken target entry point: the file it names does not exist."""
    return Path(__file__).with_name("no-such-target.toml")
