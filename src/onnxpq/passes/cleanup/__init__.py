"""Exact rewrites: outputs match the input model within float tolerance."""

from onnxpq.passes.cleanup.constants_to_initializers import ConstantsToInitializersPass
from onnxpq.passes.cleanup.eliminate_dead import EliminateDeadPass
from onnxpq.passes.cleanup.eliminate_identity import EliminateIdentityPass
from onnxpq.passes.cleanup.fold_batchnorm import FoldBatchNormPass
from onnxpq.passes.cleanup.upgrade_opset import UpgradeOpsetPass

__all__ = [
    "ConstantsToInitializersPass",
    "EliminateDeadPass",
    "EliminateIdentityPass",
    "FoldBatchNormPass",
    "UpgradeOpsetPass",
]
