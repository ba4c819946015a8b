"""Uniform affine quantization: the arithmetic every quantize pass shares.

For a real tensor x, a b-bit grid [q_min, q_max], scale s > 0 and zero point z::

    q  = clip(round(x / s) + z, q_min, q_max)        (round half to even, as ONNX QuantizeLinear)
    x̂  = s · (q − z)

Symmetric (z = 0), signed: q_max = 2^(b−1) − 1 and s = c / q_max for a clip
value c. At 8 bits and more the grid is "narrow", q_min = −q_max, so int8
weights never use −128 (the VNNI u8·s8 kernels could saturate on it); below 8
bits the full grid q_min = −q_max − 1 is kept, since one level in 16 matters.

Asymmetric: the range [lo, hi] is widened to contain 0 (so that 0 is exactly
representable, which zero padding needs), s = (hi − lo) / (q_max − q_min),
z = round(q_min − lo / s), clipped to the grid.

MSE-optimal clipping (used for weights, as in Kuzmin et al., NeurIPS 2023):
for every channel, the clip value c is chosen from a grid of fractions of
max|x| (``grid`` points in [``min_fraction``, 1]) to minimise
Σ (x − x̂(c))², computed for all candidates at once per channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "QuantizedTensor",
    "integer_range",
    "storage_dtype",
    "symmetric_grid",
    "symmetric_scale",
    "asymmetric_params",
    "quantize",
    "dequantize",
    "mse_optimal_absmax",
    "quantize_weight",
    "sqnr_db",
]


def integer_range(bits: int, signed: bool, *, narrow: bool = False) -> tuple[int, int]:
    """(q_min, q_max) of a b-bit grid; ``narrow`` drops the most negative value of a signed grid."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in 2..16, got {bits}")
    if signed:
        q_max = 2 ** (bits - 1) - 1
        return (-q_max if narrow else -q_max - 1), q_max
    return 0, 2**bits - 1


def storage_dtype(bits: int, signed: bool) -> np.dtype:
    """The numpy container of a b-bit grid: int8/uint8 up to 8 bits, int16/uint16 above."""
    if bits <= 8:
        return np.dtype(np.int8 if signed else np.uint8)
    return np.dtype(np.int16 if signed else np.uint16)


def symmetric_grid(bits: int) -> tuple[int, int]:
    """(q_min, q_max) of the symmetric weight grid: narrow at 8+ bits, full below."""
    return integer_range(bits, True, narrow=bits >= 8)


def symmetric_scale(absmax: np.ndarray | float, bits: int) -> np.ndarray:
    """s = absmax / q_max on the signed grid; a zero range gets s = 1 (all values quantize to 0)."""
    _, q_max = integer_range(bits, True)
    absmax = np.asarray(absmax, dtype=np.float64)
    return np.where(absmax > 0, absmax / q_max, 1.0)


def asymmetric_params(lo: np.ndarray | float, hi: np.ndarray | float, bits: int, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) for the range [lo, hi] widened to contain 0."""
    q_min, q_max = integer_range(bits, signed)
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    span = hi - lo
    scale = np.where(span > 0, span / (q_max - q_min), 1.0)
    zero_point = np.clip(np.round(q_min - lo / scale), q_min, q_max)
    return scale, zero_point.astype(np.int64)


def quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | int, q_min: int, q_max: int) -> np.ndarray:
    """q = clip(round(x / s) + z, q_min, q_max) as int64 (round half to even)."""
    q = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, q_min, q_max).astype(np.int64)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | int) -> np.ndarray:
    """x̂ = s · (q − z), float64."""
    return (np.asarray(q, dtype=np.float64) - zero_point) * scale


def _channels_first(x: np.ndarray, axis: int | None) -> np.ndarray:
    """View as [channels, elements] (one channel when axis is None)."""
    if axis is None:
        return x.reshape(1, -1)
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


#: Values per channel the MSE clip search looks at (see :func:`mse_optimal_absmax`).
SEARCH_SAMPLE = 2048


def mse_optimal_absmax(
    x: np.ndarray, bits: int, axis: int | None, *, grid: int = 80, min_fraction: float = 0.2
) -> np.ndarray:
    """Per-channel clip value c minimising Σ (x − x̂(c))² for symmetric b-bit quantization.

    Coarse to fine: ``√grid``-ish coarse fractions of max|x| in [``min_fraction``, 1],
    then as many again around each channel's best coarse point, so the
    resolution equals a ``grid``-point search at a fraction of its cost (the
    error curve is unimodal in c for all but pathological channels). Computed
    in float32, per channel. Channels longer than ``4 · SEARCH_SAMPLE`` are
    searched on a stratified estimate: the ``SEARCH_SAMPLE / 4`` largest |x|
    of the channel exactly (clipping error lives in the tail), plus an evenly
    strided sample of the rest, weighted up to the rest's count (rounding
    error is an average, which a few thousand values estimate well).
    Returns an array of shape [channels] (or [1] when ``axis`` is None).
    """
    rows = _channels_first(np.asarray(x, dtype=np.float32), axis)
    absmax = (np.max(np.abs(rows), axis=1) if rows.size else np.zeros(rows.shape[0], dtype=np.float32)).astype(np.float64)
    weights = None
    length = rows.shape[1]
    if length > 4 * SEARCH_SAMPLE:
        top = SEARCH_SAMPLE // 4
        tail = np.take_along_axis(rows, np.argpartition(np.abs(rows), length - top, axis=1)[:, length - top :], axis=1)
        threshold = np.min(np.abs(tail), axis=1, keepdims=True)
        strided = rows[:, :: length // SEARCH_SAMPLE]
        body = np.where(np.abs(strided) < threshold, strided, 0.0).astype(np.float32)  # tail values counted once
        scale_up = (length - top) / np.maximum(np.count_nonzero(np.abs(strided) < threshold, axis=1), 1)
        rows = np.concatenate([tail, body], axis=1)
        weights = np.concatenate(
            [np.ones_like(tail), np.broadcast_to(scale_up[:, None], body.shape).astype(np.float32)], axis=1
        )
    q_min, q_max = symmetric_grid(bits)
    coarse = max(4, int(np.ceil(np.sqrt(grid))) * 2)
    fine = max(4, -(-grid // coarse) * 2)
    best = absmax.copy()
    best_err = np.full(rows.shape[0], np.inf)

    def try_fractions(fractions: np.ndarray) -> None:
        nonlocal best, best_err
        clip = absmax * fractions
        scale = np.where(clip > 0, clip / q_max, 1.0).astype(np.float32)[:, None]
        q = np.clip(np.round(rows / scale), q_min, q_max)
        squared = np.square(rows - q * scale, dtype=np.float32)
        err = np.sum(squared if weights is None else squared * weights, axis=1, dtype=np.float64)
        better = err < best_err
        best = np.where(better, clip, best)
        best_err = np.where(better, err, best_err)

    step = (1.0 - min_fraction) / (coarse - 1)
    for fraction in np.linspace(min_fraction, 1.0, coarse):
        try_fractions(np.full(rows.shape[0], fraction))
    centre = np.where(absmax > 0, best / np.where(absmax > 0, absmax, 1.0), 1.0)
    for offset in np.linspace(-step, step, fine):
        try_fractions(np.clip(centre + offset, min_fraction, 1.0))
    return best


@dataclass(frozen=True)
class QuantizedTensor:
    """A quantized tensor with its parameters, ready for a DequantizeLinear.

    ``scale``/``zero_point`` have shape [] (per-tensor), [C] (per-channel along
    ``axis``) or the blocked shape of ``x`` with ``axis`` divided by ``block_size``.
    """

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    axis: int | None
    block_size: int | None

    def dequantized(self) -> np.ndarray:
        """x̂ in float64, same shape as the original tensor."""
        scale, zero = self.scale, self.zero_point.astype(np.float64)
        if self.block_size is not None and self.axis is not None:
            scale = np.repeat(scale, self.block_size, axis=self.axis)
            zero = np.repeat(zero, self.block_size, axis=self.axis)
            index = [slice(None)] * self.values.ndim
            index[self.axis] = slice(0, self.values.shape[self.axis])
            scale, zero = scale[tuple(index)], zero[tuple(index)]
        elif self.axis is not None and np.ndim(scale) == 1:
            shape = [1] * self.values.ndim
            shape[self.axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return dequantize(self.values, scale, zero)


def quantized_sqnr_db(x: np.ndarray, quantized: QuantizedTensor) -> float:
    """:func:`sqnr_db` of ``x`` against ``quantized.dequantized()``, per-channel tensors a slice of channels at a time.

    Equal to ``sqnr_db(x, quantized.dequantized())`` up to float summation order,
    without the float64 copies of the whole tensor.
    """
    axis = quantized.axis
    if quantized.block_size is not None or axis is None or np.ndim(quantized.scale) != 1 or x.size <= CHUNK_ELEMENTS:
        return sqnr_db(x, quantized.dequantized())
    axis %= x.ndim
    channels = x.shape[axis]
    step = max(1, CHUNK_ELEMENTS // max(1, x.size // channels))
    signal = noise = 0.0
    index: list[slice] = [slice(None)] * x.ndim
    shape = [1] * x.ndim
    shape[axis] = -1
    for start in range(0, channels, step):
        index[axis] = slice(start, min(start + step, channels))
        part = np.asarray(x[tuple(index)], dtype=np.float64)
        scale = quantized.scale[start : start + step].reshape(shape)
        zero = quantized.zero_point[start : start + step].astype(np.float64).reshape(shape)
        signal += float(np.sum(part**2))
        noise += float(np.sum((part - dequantize(quantized.values[tuple(index)], scale, zero)) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(signal / noise))


def quantize_weight(
    w: np.ndarray,
    bits: int = 8,
    *,
    axis: int | None = 0,
    block_size: int | None = None,
    symmetric: bool = True,
    clip: str = "mse",
) -> QuantizedTensor:
    """Quantize a weight per tensor (``axis=None``), per channel along ``axis``, or per block of ``block_size`` along ``axis``.

    Symmetric weights use the narrow signed grid and z = 0; asymmetric ones the
    full unsigned grid. ``clip`` is ``"mse"`` (MSE-optimal clip per channel or
    block) or ``"minmax"`` (the full range).
    """
    if clip not in ("mse", "minmax"):
        raise ValueError(f"clip must be 'mse' or 'minmax', got {clip!r}")
    if axis is not None and block_size is None and np.size(w) > CHUNK_ELEMENTS and np.shape(w)[axis] > 1:
        return _quantize_per_channel_chunked(np.asarray(w), bits, axis, symmetric, clip)
    w = np.asarray(w, dtype=np.float64)
    if block_size is not None:
        if axis is None:
            raise ValueError("per-group quantization needs an axis")
        return _quantize_blocked(w, bits, axis, block_size, symmetric, clip)
    if symmetric:
        q_min, q_max = symmetric_grid(bits)
        absmax = mse_optimal_absmax(w, bits, axis) if clip == "mse" else np.max(np.abs(_channels_first(w, axis)), axis=1)
        scale = symmetric_scale(absmax, bits)
        zero = np.zeros_like(scale, dtype=np.int64)
    else:
        q_min, q_max = integer_range(bits, False)
        rows = _channels_first(w, axis)
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        if clip == "mse":
            lo, hi = _mse_asymmetric_range(rows, lo, hi, bits)
        scale, zero = asymmetric_params(lo, hi, bits, False)
    if axis is None:
        scale, zero = scale.reshape(()), zero.reshape(())
        q = quantize(w, scale, zero, q_min, q_max)
    else:
        shape = [1] * w.ndim
        shape[axis] = -1
        q = quantize(w, scale.reshape(shape), zero.reshape(shape), q_min, q_max)
    return QuantizedTensor(q.astype(storage_dtype(bits, symmetric)), scale, zero, bits, axis, None)


#: Per-channel quantization of larger tensors goes a slice of channels at a time (bounded memory).
CHUNK_ELEMENTS = 1 << 22


def _quantize_per_channel_chunked(w: np.ndarray, bits: int, axis: int, symmetric: bool, clip: str) -> QuantizedTensor:
    """:func:`quantize_weight` per channel, ``CHUNK_ELEMENTS`` values at a time.

    Channels are independent (each has its own clip, scale and zero point), so
    the result is identical to quantizing the whole tensor at once; only the
    float64 working copies are bounded by the chunk instead of the tensor
    (they were ~8x the float32 weight).
    """
    given_axis, axis = axis, axis % w.ndim
    channels = w.shape[axis]
    per_channel = max(1, w.size // channels)
    step = max(1, CHUNK_ELEMENTS // per_channel)
    q = np.empty(w.shape, dtype=storage_dtype(bits, symmetric))
    scales, zeros = [], []
    index: list[slice] = [slice(None)] * w.ndim
    for start in range(0, channels, step):
        index[axis] = slice(start, min(start + step, channels))
        part = quantize_weight(w[tuple(index)], bits, axis=axis, symmetric=symmetric, clip=clip)
        q[tuple(index)] = part.values
        scales.append(part.scale)
        zeros.append(part.zero_point)
    return QuantizedTensor(q, np.concatenate(scales), np.concatenate(zeros), bits, given_axis, None)


def _mse_asymmetric_range(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int, grid: int = 60) -> tuple[np.ndarray, np.ndarray]:
    q_min, q_max = integer_range(bits, False)
    best_lo, best_hi = lo.copy(), hi.copy()
    best_err = np.full(rows.shape[0], np.inf)
    for fraction in np.linspace(0.3, 1.0, grid):
        cand_lo, cand_hi = lo * fraction, hi * fraction
        scale, zero = asymmetric_params(cand_lo, cand_hi, bits, False)
        q = quantize(rows, scale[:, None], zero[:, None], q_min, q_max)
        err = np.sum((rows - dequantize(q, scale[:, None], zero[:, None])) ** 2, axis=1)
        better = err < best_err
        best_lo, best_hi = np.where(better, cand_lo, best_lo), np.where(better, cand_hi, best_hi)
        best_err = np.where(better, err, best_err)
    return best_lo, best_hi


def _quantize_blocked(w: np.ndarray, bits: int, axis: int, block_size: int, symmetric: bool, clip: str) -> QuantizedTensor:
    """Blocks of ``block_size`` consecutive elements along ``axis`` share a scale (ONNX blocked Q/DQ layout)."""
    length = w.shape[axis]
    blocks = -(-length // block_size)
    pad = blocks * block_size - length
    moved = np.moveaxis(w, axis, -1)
    if pad:
        moved = np.concatenate([moved, np.zeros((*moved.shape[:-1], pad))], axis=-1)
    grouped = moved.reshape(-1, block_size)  # every row is one block
    if symmetric:
        q_min, q_max = symmetric_grid(bits)
        absmax = mse_optimal_absmax(grouped, bits, 0) if clip == "mse" else np.max(np.abs(grouped), axis=1)
        scale = symmetric_scale(absmax, bits)
        zero = np.zeros_like(scale, dtype=np.int64)
    else:
        q_min, q_max = integer_range(bits, False)
        lo, hi = grouped.min(axis=1), grouped.max(axis=1)
        if clip == "mse":
            lo, hi = _mse_asymmetric_range(grouped, lo, hi, bits)
        scale, zero = asymmetric_params(lo, hi, bits, False)
    q = quantize(grouped, scale[:, None], zero[:, None], q_min, q_max)
    q = q.reshape(*moved.shape[:-1], blocks * block_size)[..., :length]
    params_shape = (*moved.shape[:-1], blocks)
    values = np.moveaxis(q, -1, axis).astype(storage_dtype(bits, symmetric))
    scale = np.moveaxis(scale.reshape(params_shape), -1, axis)
    zero = np.moveaxis(zero.reshape(params_shape), -1, axis)
    return QuantizedTensor(values, scale, zero, bits, axis, block_size)


def sqnr_db(x: np.ndarray, x_hat: np.ndarray) -> float:
    """10·log10(Σ x² / Σ (x − x̂)²); +inf when identical."""
    x = np.asarray(x, dtype=np.float64)
    noise = float(np.sum((x - np.asarray(x_hat, dtype=np.float64)) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(float(np.sum(x**2)) / noise))
