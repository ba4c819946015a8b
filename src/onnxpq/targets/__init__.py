"""Target profiles (TOML) and their loader."""

from onnxpq.targets.profile import CostSpec, QuantizeSpec, SparsitySpec, Target, builtin_targets, load_target

__all__ = ["Target", "QuantizeSpec", "SparsitySpec", "CostSpec", "load_target", "builtin_targets"]
