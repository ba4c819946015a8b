"""How closely a candidate model's outputs follow the reference's.

For reference outputs y and candidate outputs ŷ (all outputs, flattened):

* SQNR (dB) = 10·log10(Σ y² / Σ (y − ŷ)²)  (∞ when identical);
* cosine = Σ y·ŷ / (‖y‖·‖ŷ‖);
* max_abs_error = max |y − ŷ|;
* a NaN or Inf in ŷ where y is finite (or the reverse) makes max_abs_error
  +∞, SQNR −∞ and cosine 0: a broken candidate never reads as faithful;
* top-1 agreement: for a classifier-shaped first output ([samples, classes]
  or [samples, 1, classes] ...), the fraction of samples whose argmax over the
  last axis agrees; None when the output is not classifier-shaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Fidelity", "compare_outputs", "is_classifier_output"]


@dataclass(frozen=True)
class Fidelity:
    """Output agreement between a reference and a candidate."""

    sqnr_db: float
    cosine: float
    max_abs_error: float
    top1_agreement: float | None
    samples: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if math.isinf(self.sqnr_db):
            data["sqnr_db"] = None  # JSON has no infinity: None with identical = true
        data["identical"] = self.max_abs_error == 0.0 and math.isinf(self.sqnr_db) and self.sqnr_db > 0
        return data


def is_classifier_output(array: np.ndarray) -> bool:
    """[samples, ..., classes] with more than one class and a float type."""
    return array.ndim >= 2 and array.shape[-1] > 1 and np.issubdtype(array.dtype, np.floating)


def compare_outputs(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> Fidelity:
    """Fidelity of ``candidate`` against ``reference`` (same outputs, same order)."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference outputs but {len(candidate)} candidate outputs")
    signal = noise = dot = norm_c = 0.0
    worst = 0.0
    for ref, cand in zip(reference, candidate, strict=True):
        if ref.shape != cand.shape:
            raise ValueError(f"output shapes differ: {list(ref.shape)} vs {list(cand.shape)}")
        if not np.issubdtype(ref.dtype, np.number) or ref.dtype == np.bool_:
            mismatch = float(np.count_nonzero(ref != cand))
            noise += mismatch
            signal += float(ref.size)
            continue
        r = ref.astype(np.float64).ravel()
        c = cand.astype(np.float64).ravel()
        finite_r, finite_c = np.isfinite(r), np.isfinite(c)
        if not np.array_equal(finite_r, finite_c) or not np.array_equal(r[~finite_r], c[~finite_c]):
            worst = math.inf  # NaN/Inf where the reference has none (or a different one): not a fidelity, a failure
            noise = math.inf
        r, c = np.where(finite_r & finite_c, r, 0.0), np.where(finite_r & finite_c, c, 0.0)
        diff = r - c
        signal += float(r @ r)
        noise += float(diff @ diff)
        dot += float(r @ c)
        norm_c += float(c @ c)
        if diff.size:
            worst = max(worst, float(np.max(np.abs(diff))))
    if noise == 0.0:
        sqnr = math.inf
    elif math.isinf(noise) or signal == 0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(signal / noise)
    denominator = math.sqrt(signal * norm_c)
    if math.isinf(noise):
        cosine = 0.0
    else:
        cosine = dot / denominator if denominator > 0 else (1.0 if noise == 0.0 else 0.0)
    top1 = None
    first_ref, first_cand = reference[0], candidate[0]
    if is_classifier_output(first_ref):
        top1 = float(np.mean(np.argmax(first_ref, axis=-1) == np.argmax(first_cand, axis=-1)))
    samples = len(first_ref) if first_ref.ndim else 1
    return Fidelity(sqnr, cosine, worst, top1, samples)
