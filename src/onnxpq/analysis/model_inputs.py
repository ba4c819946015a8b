"""The model's input signature, and inputs synthesised from it.

When no data is given, checks and validation run on inputs drawn from the
input types: floats ~ N(0, 1), integers uniform in [0, 10), booleans fair
coins — seeded, so runs are reproducible. Symbolic dimensions take the value
given in ``dims`` (by name), else 1; a symbolic *first* dimension is the
batch axis and carries the samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

__all__ = ["InputSpec", "input_specs", "synthesize_inputs"]


@dataclass(frozen=True)
class InputSpec:
    """One graph input that is not an initializer."""

    name: str
    dtype: np.dtype | None
    shape: tuple[int | str | None, ...] | None

    @property
    def batched(self) -> bool:
        """True when the first dimension is symbolic (a batch axis)."""
        return bool(self.shape) and not isinstance(self.shape[0], int)

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ", ".join(str(d) for d in self.shape) + "]"
        return f"{self.name}: {self.dtype} {dims}"


def input_specs(model: ir.Model) -> list[InputSpec]:
    """Graph inputs that need feeding (initializers listed as inputs are left out)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else None
        shape = None
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else (d.value if d.value is not None else None) for d in value.shape)
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def synthesize_inputs(
    model: ir.Model,
    count: int = 8,
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """``count`` samples for every input (first axis = samples), from the input types."""
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    arrays = {}
    for spec in input_specs(model):
        if spec.dtype is None or spec.shape is None:
            raise ValueError(f"input '{spec.name}' has no static type/rank; pass --data")
        resolved = [d if isinstance(d, int) else dims.get(d or "", 1) for d in spec.shape]
        shape = [count, *resolved[1:]] if spec.batched else [count, *resolved]
        if np.issubdtype(spec.dtype, np.floating):
            array = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            array = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(spec.dtype, np.integer):
            array = rng.integers(0, 10, shape).astype(spec.dtype)
        else:
            raise ValueError(f"input '{spec.name}' has type {spec.dtype}, which cannot be synthesised; pass --data")
        arrays[spec.name] = array
    return arrays
