"""Pruning passes: unstructured magnitude, N:M structured sparsity."""

from onnxpq.passes.prune.magnitude import PruneMagnitudePass
from onnxpq.passes.prune.n_m import PruneNMPass

__all__ = ["PruneMagnitudePass", "PruneNMPass"]
