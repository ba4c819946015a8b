"""Pruning passes: unstructured magnitude, N:M structured sparsity, and channel removal."""

from onnxpq.passes.prune.channels import PruneChannelsPass
from onnxpq.passes.prune.magnitude import PruneMagnitudePass
from onnxpq.passes.prune.n_m import PruneNMPass

__all__ = ["PruneChannelsPass", "PruneMagnitudePass", "PruneNMPass"]
