"""prune-channels: coupled channels physically removed, checked in onnxruntime, by shapes, by MACs.

Every graph is built here (``onnx.parser`` text, seeded weights), one per coupling
case. The weights are laid out so that the channels the pass must remove are
known in advance: in ``zero`` mode they are exactly zero (the pruned model must
then give the original outputs, to float rounding), otherwise they are 20x
smaller than the rest (same channels removed; the outputs change and
reconstruction has something to recover). Inputs are correlated across
channels (a rank-2 latent plus a little noise), as real activations are, which is
what lets least squares predict a removed channel from the kept ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from onnxpq.analysis.channel_groups import ChannelGroups
from onnxpq.analysis.macs import model_cost
from onnxpq.core.context import PassContext
from onnxpq.core.manager import PassManager
from onnxpq.core.pipeline_text import format_pipeline, parse_pipeline
from onnxpq.errors import PassFailed, PipelineError
from onnxpq.passes.prune.channels import PruneChannelsPass
from onnxpq.targets.profile import load_target

BATCH = 2  # the batch the hand MAC counts are written for
SMALL = 0.05  # scale of the channels to remove when they are not exactly zero


# --------------------------------------------------------------------------- building graphs


def _model(graph_text: str, weights: dict[str, np.ndarray], opset: int = 17) -> ir.Model:
    """A checked model from ``onnx.parser`` graph text; every node is named after its first output."""
    ir_version = 10 if opset >= 21 else 8 if opset < 19 else 9
    proto = onnx.parser.parse_model(f'<ir_version: {ir_version}, opset_import: ["" : {opset}]>\n{graph_text}')
    for node in proto.graph.node:
        node.name = node.output[0]
    for name, array in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


class _Weights:
    """Seeded weights; ``pruned(...)`` marks the slices the pass must remove (zero or small)."""

    def __init__(self, seed: int, zero: bool) -> None:
        self.rng = np.random.default_rng(seed)
        self.zero = zero

    def normal(self, *shape: int) -> np.ndarray:
        return self.rng.normal(size=shape).astype(np.float32)

    def pruned(self, array: np.ndarray, axis: int, index: list[int]) -> np.ndarray:
        array = array.copy()
        where = [slice(None)] * array.ndim
        where[axis] = index
        array[tuple(where)] *= np.float32(0.0 if self.zero else SMALL)
        return array


@dataclass
class Case:
    """A coupling case: the model, the weight shapes after pruning, the hand-counted MACs at BATCH."""

    model: ir.Model
    shapes: dict[tuple[str, int], tuple[int, ...]]  # (node, input index) -> shape after pruning
    macs: int
    options: dict[str, Any] = field(default_factory=dict)
    attributes: dict[tuple[str, str], int] = field(default_factory=dict)  # (node, attribute) -> value after


def _chain(w: _Weights) -> Case:
    graph = """
    chain (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
        c1 = Conv <pads = [1, 1, 1, 1]> (x, W1, B1)
        r1 = Relu (c1)
        y = Conv <pads = [1, 1, 1, 1]> (r1, W2, B2)
    }"""
    gone = [1, 3, 5, 7]
    weights = {
        "W1": w.pruned(w.normal(8, 3, 3, 3), 0, gone),
        "B1": w.pruned(w.normal(8), 0, gone),
        "W2": w.normal(4, 8, 3, 3),
        "B2": w.normal(4),
    }
    macs = BATCH * 4 * 64 * 3 * 9 + BATCH * 4 * 64 * 4 * 9
    return Case(_model(graph, weights), {("c1", 1): (4, 3, 3, 3), ("c1", 2): (4,), ("y", 1): (4, 4, 3, 3)}, macs)


def _conv_bn_relu(w: _Weights) -> Case:
    graph = """
    conv_bn (float[N, 3, 8, 8] x) => (float[N, 4, 8, 8] y) {
        c1 = Conv <pads = [1, 1, 1, 1]> (x, W1)
        b1 = BatchNormalization <epsilon = 0.001> (c1, gamma, beta, mean, var)
        r1 = Relu (b1)
        y = Conv (r1, W2)
    }"""
    gone = [0, 2, 4, 6]
    gamma = w.rng.uniform(0.5, 1.5, 8).astype(np.float32)
    beta = w.normal(8)
    gamma[gone] = 1e-3 if w.zero else SMALL
    if w.zero:
        beta[gone] = -5.0  # BN output ≈ -5 there: zero after Relu
    weights = {
        "W1": w.normal(8, 3, 3, 3),
        "gamma": gamma,
        "beta": beta,
        "mean": w.normal(8) * 0.1,
        "var": w.rng.uniform(0.5, 2.0, 8).astype(np.float32),
        "W2": w.normal(4, 8, 1, 1),
    }
    shapes = {("c1", 1): (4, 3, 3, 3), **{("b1", i): (4,) for i in range(1, 5)}, ("y", 1): (4, 4, 1, 1)}
    macs = BATCH * 4 * 64 * 3 * 9 + BATCH * 4 * 64 * 4
    return Case(_model(graph, weights), shapes, macs, options={"importance": "bn-scale"})


def _residual(w: _Weights) -> Case:
    graph = """
    residual (float[N, 4, 6, 6] x) => (float[N, 3, 6, 6] y) {
        a = Conv (x, Wa)
        ra = Relu (a)
        b = Conv <pads = [1, 1, 1, 1]> (ra, Wb)
        s = Conv (x, Ws)
        sum = Add (b, s)
        rs = Relu (sum)
        y = Conv (rs, Wo)
    }"""
    weights = {
        "Wa": w.pruned(w.normal(8, 4, 1, 1), 0, [4, 5, 6, 7]),
        "Wb": w.pruned(w.normal(8, 8, 3, 3), 0, [0, 1, 2, 3]),
        "Ws": w.pruned(w.normal(8, 4, 1, 1), 0, [0, 1, 2, 3]),
        "Wo": w.normal(3, 8, 1, 1),
    }
    shapes = {("a", 1): (4, 4, 1, 1), ("b", 1): (4, 4, 3, 3), ("s", 1): (4, 4, 1, 1), ("y", 1): (3, 4, 1, 1)}
    macs = BATCH * 36 * (4 * 4 + 4 * 4 * 9 + 4 * 4 + 3 * 4)
    return Case(_model(graph, weights), shapes, macs)


def _concat(w: _Weights) -> Case:
    graph = """
    concat (float[N, 3, 5, 5] x) => (float[N, 2, 5, 5] y) {
        p = Conv (x, Wp)
        q = Conv (x, Wq)
        cat = Concat <axis = 1> (p, q)
        y = Conv (cat, Wc)
    }"""
    weights = {
        "Wp": w.pruned(w.normal(4, 3, 1, 1), 0, [0, 1]),
        "Wq": w.pruned(w.normal(6, 3, 1, 1), 0, [1, 3, 5]),
        "Wc": w.normal(2, 10, 1, 1),
    }
    shapes = {("p", 1): (2, 3, 1, 1), ("q", 1): (3, 3, 1, 1), ("y", 1): (2, 5, 1, 1)}
    macs = BATCH * 25 * (2 * 3 + 3 * 3 + 2 * 5)
    return Case(_model(graph, weights), shapes, macs)


def _mobilenet_block(w: _Weights) -> Case:
    graph = """
    mobilenet (float[N, 4, 8, 8] x) => (float[N, 6, 8, 8] y) <float lo = {0.0}, float hi = {6.0}> {
        e = Conv (x, We)
        re = Relu (e)
        d = Conv <group = 8, pads = [1, 1, 1, 1]> (re, Wd)
        rd = Clip (d, lo, hi)
        y = Conv (rd, Wp)
    }"""
    gone = [0, 2, 5, 7]
    weights = {
        "We": w.pruned(w.normal(8, 4, 1, 1), 0, gone),
        "Wd": w.pruned(w.normal(8, 1, 3, 3), 0, gone),
        "Wp": w.normal(6, 8, 1, 1),
    }
    shapes = {("e", 1): (4, 4, 1, 1), ("d", 1): (4, 1, 3, 3), ("y", 1): (6, 4, 1, 1)}
    macs = BATCH * 64 * (4 * 4 + 4 * 9 + 6 * 4)
    return Case(_model(graph, weights), shapes, macs, attributes={("d", "group"): 4})


def _grouped_conv(w: _Weights) -> Case:
    graph = """
    grouped (float[N, 4, 6, 6] x) => (float[N, 2, 6, 6] y) {
        a = Conv (x, Wa)
        ra = Relu (a)
        g = Conv <group = 2, pads = [1, 1, 1, 1]> (ra, Wg)
        rg = Relu (g)
        y = Conv (rg, Wo)
    }"""
    weights = {
        "Wa": w.pruned(w.normal(8, 4, 1, 1), 0, [4, 5, 6, 7]),
        "Wg": w.pruned(w.normal(8, 4, 3, 3), 0, [4, 5, 6, 7]),
        "Wo": w.normal(2, 8, 1, 1),
    }
    shapes = {("a", 1): (4, 4, 1, 1), ("g", 1): (4, 4, 3, 3), ("y", 1): (2, 4, 1, 1)}
    macs = BATCH * 36 * (4 * 4 + 4 * 4 * 9 + 2 * 4)
    return Case(_model(graph, weights), shapes, macs, attributes={("g", "group"): 1})


def _flatten_gemm(w: _Weights, style: str) -> Case:
    flatten = {
        "flatten": "f = Flatten (r)",
        "reshape-minus-one": "f = Reshape (r, shape)",
        "reshape-literal": "f = Reshape (r, shape)",
    }[style]
    shape = {"reshape-minus-one": "int64[2] shape = {0, -1}", "reshape-literal": "int64[2] shape = {-1, 64}"}.get(style, "")
    graph = f"""
    flatten_gemm (float[N, 3, 4, 4] x) => (float[N, 5] y) <{shape}> {{
        c = Conv <pads = [1, 1, 1, 1]> (x, Wc, Bc)
        r = Relu (c)
        {flatten}
        y = Gemm (f, Wf, Bf)
    }}""".replace("<>", "")
    gone = [1, 2]
    weights = {
        "Wc": w.pruned(w.normal(4, 3, 3, 3), 0, gone),
        "Bc": w.pruned(w.normal(4), 0, gone),
        "Wf": w.normal(64, 5),
        "Bf": w.normal(5),
    }
    shapes = {("c", 1): (2, 3, 3, 3), ("c", 2): (2,), ("y", 1): (32, 5)}
    if style == "reshape-literal":
        shapes[("f", 1)] = (2,)
    macs = BATCH * 2 * 16 * 3 * 9 + BATCH * 5 * 32
    return Case(_model(graph, weights), shapes, macs)


def _mlp(w: _Weights, trans_b: int) -> Case:
    graph = f"""
    mlp (float[N, 6] x) => (float[N, 3] y) {{
        h = Gemm <transB = {trans_b}> (x, W1, B1)
        r = Relu (h)
        y = Gemm <transB = {trans_b}> (r, W2, B2)
    }}"""
    gone = [0, 1, 2, 3, 4]
    w1 = w.pruned(w.normal(10, 6), 0, gone)
    w2 = w.normal(10, 3)
    weights = {
        "W1": w1 if trans_b else w1.T.copy(),
        "B1": w.pruned(w.normal(10), 0, gone),
        "W2": w2.T.copy() if trans_b else w2,
        "B2": w.normal(3),
    }
    shapes = {("h", 1): (5, 6) if trans_b else (6, 5), ("h", 2): (5,), ("y", 1): (3, 5) if trans_b else (5, 3)}
    macs = BATCH * 5 * 6 + BATCH * 3 * 5
    return Case(_model(graph, weights), shapes, macs)


def _ffn(w: _Weights) -> Case:
    graph = """
    ffn (float[N, S, 8] x) => (float[N, S, 8] y) {
        h = MatMul (x, W1)
        hb = Add (h, B1)
        g = Gelu (hb)
        o = MatMul (g, W2)
        y = Add (o, B2)
    }"""
    gone = list(range(8, 16))
    weights = {
        "W1": w.pruned(w.normal(8, 16), 1, gone),
        "B1": w.pruned(w.normal(16), 0, gone),
        "W2": w.normal(16, 8),
        "B2": w.normal(8),
    }
    shapes = {("h", 1): (8, 8), ("hb", 1): (8,), ("o", 1): (8, 8)}
    macs = 2 * BATCH * 4 * 8 * 8  # S = 4
    return Case(_model(graph, weights, opset=20), shapes, macs)


def _attention(w: _Weights, style: str) -> Case:
    """Four heads of two: Q/K/V projections, heads split and merged by Reshape, O projection."""
    if style == "constant-shapes":
        shapes_text = "int64[4] s4 = {0, 0, 4, 2}, int64[3] s3 = {0, 0, 8}, float scale = {1.41421356}"
        computed = ""
    else:  # the shapes read N and S from the projection at run time, like exported models
        shapes_text = "int64[2] hd = {4, 2}, int64[1] d = {8}, int64[2] ns_index = {0, 1}, float scale = {1.41421356}"
        computed = """
        qshape = Shape (qb)
        ns = Gather (qshape, ns_index)
        s4 = Concat <axis = 0> (ns, hd)
        s3 = Concat <axis = 0> (ns, d)"""
    graph = f"""
    attention (float[N, 3, 8] x) => (float[N, 3, 8] y) <{shapes_text}> {{
        q = MatMul (x, Wq)
        qb = Add (q, Bq)
        k = MatMul (x, Wk)
        kb = Add (k, Bk)
        v = MatMul (x, Wv)
        vb = Add (v, Bv){computed}
        q4 = Reshape (qb, s4)
        k4 = Reshape (kb, s4)
        v4 = Reshape (vb, s4)
        qt = Transpose <perm = [0, 2, 1, 3]> (q4)
        kt = Transpose <perm = [0, 2, 3, 1]> (k4)
        vt = Transpose <perm = [0, 2, 1, 3]> (v4)
        scores = MatMul (qt, kt)
        scaled = Div (scores, scale)
        p = Softmax <axis = -1> (scaled)
        ctx = MatMul (p, vt)
        ct = Transpose <perm = [0, 2, 1, 3]> (ctx)
        c3 = Reshape (ct, s3)
        o = MatMul (c3, Wo)
        y = Add (o, Bo)
    }}"""
    gone = [2, 3, 6, 7]  # heads 1 and 3
    weights = {}
    for name in ("q", "k", "v"):
        weights[f"W{name}"] = w.pruned(w.normal(8, 8), 1, gone)
        weights[f"B{name}"] = w.pruned(w.normal(8), 0, gone)
    weights["Wo"] = w.normal(8, 8)
    weights["Bo"] = w.normal(8)
    shapes = {(n, 1): (8, 4) for n in ("q", "k", "v")}
    shapes.update({(n, 1): (4,) for n in ("qb", "kb", "vb")})
    shapes[("o", 1)] = (4, 8)
    if style == "constant-shapes":
        shapes[("q4", 1)] = (4,)
    seq, heads, dh = 3, 2, 2
    macs = 3 * BATCH * seq * 8 * 4 + 2 * BATCH * heads * seq * seq * dh + BATCH * seq * 4 * 8
    return Case(_model(graph, weights), shapes, macs)


def _conv_transpose(w: _Weights) -> Case:
    graph = """
    deconv (float[N, 3, 4, 4] x) => (float[N, 2, 8, 8] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, W1)
        r = Relu (c)
        t = ConvTranspose <strides = [2, 2]> (r, Wt, Bt)
        rt = Relu (t)
        y = Conv (rt, W3)
    }"""
    weights = {
        "W1": w.pruned(w.normal(6, 3, 3, 3), 0, [0, 1, 2]),
        "Wt": w.pruned(w.normal(6, 4, 2, 2), 1, [0, 1]),
        "Bt": w.pruned(w.normal(4), 0, [0, 1]),
        "W3": w.normal(2, 4, 1, 1),
    }
    shapes = {("c", 1): (3, 3, 3, 3), ("t", 1): (3, 2, 2, 2), ("t", 2): (2,), ("y", 1): (2, 2, 1, 1)}
    macs = BATCH * 3 * 16 * 3 * 9 + BATCH * 3 * 16 * 2 * 4 + BATCH * 2 * 64 * 2
    return Case(_model(graph, weights), shapes, macs)


def _split(w: _Weights, style: str) -> Case:
    if style == "sizes":
        split, opset, init = "a, b = Split <axis = 1> (c, sz)", 17, "<int64[2] sz = {4, 4}>"
    else:
        split, opset, init = "a, b = Split <axis = 1, num_outputs = 2> (c)", 18, ""
    graph = f"""
    split (float[N, 3, 6, 6] x) => (float[N, 2, 6, 6] y) {init} {{
        c = Conv (x, W1)
        {split}
        ra = Relu (a)
        pa = Conv (ra, Wa)
        pb = Conv (b, Wb)
        y = Add (pa, pb)
    }}"""
    weights = {
        "W1": w.pruned(w.normal(8, 3, 1, 1), 0, [1, 2, 5, 6]),
        "Wa": w.normal(2, 4, 1, 1),
        "Wb": w.normal(2, 4, 1, 1),
    }
    shapes = {("c", 1): (4, 3, 1, 1), ("pa", 1): (2, 2, 1, 1), ("pb", 1): (2, 2, 1, 1), ("a", 1): (2,)}
    macs = BATCH * 36 * (4 * 3 + 2 * 2 + 2 * 2)
    return Case(_model(graph, weights, opset=opset), shapes, macs)


def _slice(w: _Weights) -> Case:
    graph = """
    slice (float[N, 3, 6, 6] x) => (float[N, 2, 6, 6] y) <int64[1] st = {2}, int64[1] en = {8}, int64[1] ax = {1}> {
        c = Conv (x, W1)
        s = Slice (c, st, en, ax)
        y = Conv (s, W2)
    }"""
    weights = {"W1": w.pruned(w.normal(8, 3, 1, 1), 0, [0, 3, 4, 6]), "W2": w.normal(2, 6, 1, 1)}
    # kept c channels 1, 2, 5, 7; the slice [2, 8) keeps 2, 5, 7 -> new slice [1, 4)
    shapes = {("c", 1): (4, 3, 1, 1), ("y", 1): (2, 3, 1, 1), ("s", 1): (1,), ("s", 2): (1,)}
    macs = BATCH * 36 * (4 * 3 + 2 * 3)
    return Case(_model(graph, weights), shapes, macs)


def _pass_through_ops(w: _Weights) -> Case:
    """Per-channel Mul/Add/PRelu constants sliced with the channel; pooling, Pad, Resize, Squeeze pass it through."""
    graph = """
    pass_through (float[N, 3, 4, 4] x) => (float[N, 5] y)
        <float[4] roi = {0.0, 0.0, 0.0, 0.0}, float[4] scales = {1.0, 1.0, 2.0, 2.0}, int64[8] pads = {0, 0, 1, 1, 0, 0, 1, 1},
         int64[2] axes = {2, 3}> {
        c = Conv <pads = [1, 1, 1, 1]> (x, Wc)
        m = Mul (c, scale)
        a = Add (m, shift)
        p = PRelu (a, slope)
        mp = MaxPool <kernel_shape = [2, 2]> (p)
        pd = Pad (mp, pads)
        rs = Resize <mode = "nearest"> (pd, roi, scales)
        gp = GlobalAveragePool (rs)
        sq = Squeeze (gp, axes)
        y = Gemm (sq, Wf, Bf)
    }"""
    gone = [0, 3, 4, 6]
    weights = {
        "Wc": w.pruned(w.normal(8, 3, 3, 3), 0, gone),
        "scale": w.normal(1, 8, 1, 1),
        "shift": w.pruned(w.normal(8, 1, 1), 0, gone),
        "slope": np.abs(w.normal(8, 1, 1)) * np.float32(0.1),
        "Wf": w.normal(8, 5),
        "Bf": w.normal(5),
    }
    shapes = {("c", 1): (4, 3, 3, 3), ("m", 1): (1, 4, 1, 1), ("a", 1): (4, 1, 1), ("p", 1): (4, 1, 1), ("y", 1): (4, 5)}
    macs = BATCH * 4 * 16 * 3 * 9 + BATCH * 5 * 4
    return Case(_model(graph, weights, opset=18), shapes, macs)


def _channels_last_matmul(w: _Weights) -> Case:
    """A Transpose to channels-last, then a MatMul over the channel axis."""
    graph = """
    channels_last (float[N, 3, 4, 4] x) => (float[N, 4, 4, 5] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, Wc)
        r = Relu (c)
        t = Transpose <perm = [0, 2, 3, 1]> (r)
        y = MatMul (t, Wm)
    }"""
    gone = [2, 5, 6, 7]
    weights = {"Wc": w.pruned(w.normal(8, 3, 3, 3), 0, gone), "Wm": w.normal(8, 5)}
    shapes = {("c", 1): (4, 3, 3, 3), ("y", 1): (4, 5)}
    macs = BATCH * 4 * 16 * 3 * 9 + BATCH * 16 * 4 * 5
    return Case(_model(graph, weights), shapes, macs)


CASES: dict[str, Callable[[_Weights], Case]] = {
    "conv-chain": _chain,
    "conv-bn-relu": _conv_bn_relu,
    "residual-add": _residual,
    "concat": _concat,
    "mobilenet-depthwise": _mobilenet_block,
    "grouped-conv": _grouped_conv,
    "flatten-gemm": lambda w: _flatten_gemm(w, "flatten"),
    "reshape-minus-one-gemm": lambda w: _flatten_gemm(w, "reshape-minus-one"),
    "reshape-literal-gemm": lambda w: _flatten_gemm(w, "reshape-literal"),
    "gemm-mlp": lambda w: _mlp(w, 0),
    "gemm-mlp-transb": lambda w: _mlp(w, 1),
    "matmul-ffn-gelu": _ffn,
    "attention-heads": lambda w: _attention(w, "constant-shapes"),
    "attention-heads-computed-shapes": lambda w: _attention(w, "computed-shapes"),
    "conv-transpose": _conv_transpose,
    "split-sizes": lambda w: _split(w, "sizes"),
    "split-num-outputs": lambda w: _split(w, "num-outputs"),
    "slice": _slice,
    "pass-through-ops": _pass_through_ops,
    "channels-last-matmul": _channels_last_matmul,
}


# --------------------------------------------------------------------------- running


def _inputs(model: ir.Model, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs correlated across channels: a rank-2 latent mixed into every channel, plus noise.

    The mixing is fixed (one distribution for every seed); ``seed`` draws the samples.
    """
    rng = np.random.default_rng(seed)
    mixer = np.random.default_rng(1234)
    feeds = {}
    for value in model.graph.inputs:
        dims = [samples if i == 0 else (d if isinstance(d, int) else 4) for i, d in enumerate(value.shape)]
        channel_axis = 1 if len(dims) == 4 else len(dims) - 1
        channels = dims[channel_axis]
        latent_dims = list(dims)
        latent_dims[channel_axis] = 2
        latent = rng.normal(size=latent_dims)
        mixing = mixer.normal(size=(2, channels))
        mixed = np.moveaxis(np.tensordot(np.moveaxis(latent, channel_axis, -1), mixing, axes=1), -1, channel_axis)
        feeds[value.name] = (mixed + 0.1 * rng.normal(size=dims)).astype(np.float32)
    return feeds


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _prune(
    model: ir.Model,
    calibration: dict[str, np.ndarray] | None = None,
    target: str | None = None,
    **options: Any,
) -> tuple[ir.Model, dict[str, Any], bool]:
    """Run the pass through the verified PassManager (structure check on); (model, notes, modified)."""
    options.setdefault("reconstruct", "off")
    with PassContext(calibration=calibration, target=load_target(target) if target else None):
        manager = PassManager([PruneChannelsPass(**options)], progress=False)
        result = manager(model)
    return result.model, manager.records[0].details, result.modified


def _initializer_of(model: ir.Model, node_name: str, index: int) -> np.ndarray:
    node = next(n for n in model.graph if n.name == node_name)
    value = node.inputs[index]
    assert value is not None and value.const_value is not None, f"{node_name} input {index} is not an initializer"
    return value.const_value.numpy()


def _params(model: ir.Model) -> int:
    return sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None)


def _relative_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    num = sum(float(np.sum((g.astype(np.float64) - r) ** 2)) for g, r in zip(got, want, strict=True))
    den = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in want)
    return num / den


def _case(name: str, zero: bool, seed: int = 0) -> Case:
    return CASES[name](_Weights(seed, zero))


# --------------------------------------------------------------------------- every coupling case


@pytest.mark.parametrize("name", CASES)
def test_pruned_model_gives_original_outputs_when_pruned_channels_are_zero(name: str) -> None:
    case = _case(name, zero=True)
    feeds = _inputs(case.model, 5, seed=1)
    pruned, _, modified = _prune(case.model, **case.options)
    assert modified
    want = _run(case.model, feeds)
    got = _run(pruned, feeds)
    for g, r in zip(got, want, strict=True):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(np.abs(r).max()))


@pytest.mark.parametrize("name", CASES)
def test_pruned_weights_have_the_expected_shapes_and_parameter_count(name: str) -> None:
    case = _case(name, zero=True)
    pruned, _, _ = _prune(case.model, **case.options)
    for (node, index), shape in case.shapes.items():
        assert _initializer_of(pruned, node, index).shape == shape, (node, index)
    for (node, attribute), expected in case.attributes.items():
        assert next(n for n in pruned.graph if n.name == node).attributes[attribute].value == expected
    replaced = set()
    for node, index in case.shapes:
        inputs = case.model.graph.node(node).inputs
        if index < len(inputs) and inputs[index] is not None:
            replaced.add(inputs[index].name)
    kept = sum(v.const_value.size for k, v in case.model.graph.initializers.items() if k not in replaced)
    assert _params(pruned) == kept + sum(math.prod(s) for s in case.shapes.values())


@pytest.mark.parametrize("name", CASES)
def test_macs_equal_the_hand_count_of_the_pruned_shapes(name: str) -> None:
    case = _case(name, zero=True)
    pruned, _, _ = _prune(case.model, **case.options)
    shapes = {
        v.name: [BATCH if i == 0 else (d if isinstance(d, int) else 4) for i, d in enumerate(v.shape)]
        for v in pruned.graph.inputs
    }
    cost = model_cost(pruned, shapes)
    assert cost.unresolved == ()
    assert cost.macs == case.macs


@pytest.mark.parametrize("name", CASES)
def test_reconstruction_lowers_the_output_error_on_calibration_like_data(name: str) -> None:
    case = _case(name, zero=False)
    calibration = _inputs(case.model, 64, seed=2)
    held_out = _inputs(case.model, 32, seed=3)
    want = _run(case.model, held_out)
    options = {"importance": "l1", "compensate": False, **case.options}  # reconstruction alone
    plain, _, _ = _prune(case.model, calibration, reconstruct="off", **options)
    refit, notes, _ = _prune(case.model, calibration, reconstruct="on", **options)
    error_off = _relative_error(_run(plain, held_out), want)
    error_on = _relative_error(_run(refit, held_out), want)
    assert error_on < error_off, (error_on, error_off)
    layers = [r for g in notes["pruned_groups"] for r in g["reconstruction"] if r.get("applied")]
    assert layers and all(r["error_after"] < r["error_before"] for r in layers)
    for node, index in case.shapes:  # the same channels go with and without reconstruction
        assert _initializer_of(refit, node, index).shape == _initializer_of(plain, node, index).shape


# --------------------------------------------------------------------------- unprunable groups


def test_group_reaching_a_graph_output_is_left_whole() -> None:
    w = _Weights(0, zero=True)
    graph = """
    out (float[N, 3, 4, 4] x) => (float[N, 8, 4, 4] r, float[N, 2, 4, 4] y) {
        c = Conv (x, W1)
        r = Relu (c)
        y = Conv (r, W2)
    }"""
    model = _model(graph, {"W1": w.pruned(w.normal(8, 3, 1, 1), 0, [0, 1, 2, 3]), "W2": w.normal(2, 8, 1, 1)})
    pruned, notes, modified = _prune(model)
    assert not modified
    assert _initializer_of(pruned, "c", 1).shape == (8, 3, 1, 1)
    reasons = [g["reason"] for g in notes["unprunable_groups"]]
    assert any("'r' is a graph output" in r for r in reasons)


def test_op_without_a_rule_leaves_the_model_unchanged() -> None:
    w = _Weights(0, zero=True)
    graph = """
    d2s (float[N, 3, 4, 4] x) => (float[N, 3, 8, 8] y) {
        c = Conv (x, W1)
        d = DepthToSpace <blocksize = 2> (c)
        y = Conv (d, W2)
    }"""
    model = _model(graph, {"W1": w.pruned(w.normal(8, 3, 1, 1), 0, [0, 1, 2, 3]), "W2": w.normal(3, 2, 1, 1)})
    before = onnx.printer.to_text(ir.to_proto(model).graph)
    pruned, notes, modified = _prune(model)
    assert not modified
    assert onnx.printer.to_text(ir.to_proto(pruned).graph) == before
    assert any("DepthToSpace" in g["reason"] for g in notes["unprunable_groups"])


# --------------------------------------------------------------------------- options


def _wide_chain(channels: int = 16, seed: int = 0) -> ir.Model:
    """Three 1x1 convs; c1's filters are ±s_i with s_i growing with i, so both norms rank them by index."""
    w = _Weights(seed, zero=False)
    scale = np.linspace(0.1, 2.0, channels).astype(np.float32)[:, None, None, None]
    graph = """
    wide (float[N, 3, 6, 6] x) => (float[N, 2, 6, 6] y) {
        c1 = Conv (x, W1)
        r1 = Relu (c1)
        c2 = Conv (r1, W2)
        r2 = Relu (c2)
        y = Conv (r2, W3)
    }"""
    weights = {
        "W1": np.sign(w.normal(channels, 3, 1, 1)) * scale,
        "W2": w.normal(channels, channels, 1, 1),
        "W3": w.normal(2, channels, 1, 1),
    }
    return _model(graph, weights)


@pytest.mark.parametrize(("ratio", "multiple", "kept"), [(0.6, 8, 8), (0.3, 8, 16), (0.5, 4, 8), (0.7, 3, 6)])
def test_kept_channel_counts_are_a_multiple_of_multiple(ratio: float, multiple: int, kept: int) -> None:
    pruned, _, _ = _prune(_wide_chain(), ratio=ratio, multiple=multiple)
    assert _initializer_of(pruned, "c1", 1).shape[0] == kept
    assert _initializer_of(pruned, "c2", 1).shape[0] == kept


def test_multiple_defaults_to_the_targets_channel_multiple() -> None:
    pruned, notes, _ = _prune(_wide_chain(), target="gpu", ratio=0.6)
    assert notes["multiple"] == 8
    assert _initializer_of(pruned, "c1", 1).shape[0] == 8


def test_attention_heads_are_removed_whole_and_multiple_counts_channels() -> None:
    case = _case("attention-heads", zero=True)
    pruned, _, _ = _prune(case.model, ratio=0.75, multiple=4)  # 1 head of 2 would leave 2 channels: 2 heads kept
    assert _initializer_of(pruned, "q", 1).shape == (8, 4)
    assert _initializer_of(pruned, "q4", 1).tolist() == [0, 0, 2, 2]


def test_min_channels_bounds_what_a_high_ratio_removes() -> None:
    pruned, _, _ = _prune(_wide_chain(), ratio=0.95, min_channels=3)
    assert _initializer_of(pruned, "c1", 1).shape[0] == 3


def test_per_node_ratio_overrides_the_ratio_of_its_producer() -> None:
    pruned, _, _ = _prune(_wide_chain(), ratio=0.5, per_node=("c1:0.25",))
    assert _initializer_of(pruned, "c1", 1).shape[0] == 12
    assert _initializer_of(pruned, "c2", 1).shape[0] == 8


def test_excluded_node_keeps_its_group_whole() -> None:
    pruned, notes, _ = _prune(_wide_chain(), ratio=0.5, exclude_nodes=("c2",))
    assert _initializer_of(pruned, "c1", 1).shape[0] == 16  # c2 reads c1's channels
    assert _initializer_of(pruned, "c2", 1).shape[0] == 16
    assert len(notes["excluded_groups"]) == 2


def test_global_scope_ranks_channels_across_groups() -> None:
    # c1's filters grow linearly in norm (skewed), c2's are all alike: normalised by their
    # group's mean, c1's weakest filters rank below every filter of c2.
    w = _Weights(0, zero=False)
    model = _wide_chain()
    w2 = w.normal(16, 16, 1, 1)
    w2 /= np.abs(w2).sum(axis=(1, 2, 3), keepdims=True)
    model.graph.initializers["W2"].const_value = ir.tensor(w2.astype(np.float32), name="W2")
    pruned, _, _ = _prune(model, ratio=0.25, scope="global")
    assert _initializer_of(pruned, "c1", 1).shape[0] == 8
    assert _initializer_of(pruned, "c2", 1).shape[0] == 16


def test_l2_and_l1_both_remove_the_weakest_filters() -> None:
    for importance in ("l1", "l2"):
        pruned, _, _ = _prune(_wide_chain(), ratio=0.5, importance=importance)
        kept = _initializer_of(pruned, "c1", 1)
        original = _wide_chain().graph.initializers["W1"].const_value.numpy()
        np.testing.assert_array_equal(kept, original[8:])  # norms grow with the index


def test_activation_importance_uses_calibration_data() -> None:
    # Channels 0-3 have the largest weights but read input channel 0, which is zero in the data.
    w = _Weights(0, zero=False)
    w1 = w.normal(8, 3, 1, 1)
    w1[:4, 0] = 10.0
    w1[:4, 1:] = 0.0
    graph = """
    act (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y) {
        c = Conv (x, W1)
        r = Relu (c)
        y = Conv (r, W2)
    }"""
    model = _model(graph, {"W1": w1, "W2": w.normal(2, 8, 1, 1)})
    data = _inputs(model, 16, seed=1)
    data["x"][:, 0] = 0.0
    pruned, notes, _ = _prune(model, data, ratio=0.5, importance="activation")
    np.testing.assert_array_equal(_initializer_of(pruned, "c", 1), w1[4:])
    np.testing.assert_allclose(_run(pruned, data)[0], _run(model, data)[0], rtol=1e-5, atol=1e-5)
    assert notes["pruned_groups"][0]["importance"] == "activation"


def test_bn_scale_importance_falls_back_to_l1_without_batchnorm() -> None:
    _, notes, _ = _prune(_wide_chain(), ratio=0.5, importance="bn-scale")
    assert {g["importance"] for g in notes["pruned_groups"]} == {"l1"}


def test_ratio_zero_changes_nothing() -> None:
    pruned, notes, modified = _prune(_wide_chain(), ratio=0.0)
    assert not modified
    assert notes["pruned_groups"] == []


def test_reconstruction_is_on_by_default_with_calibration_data() -> None:
    model = _wide_chain()
    _, notes, _ = _prune(model, _inputs(model, 16, seed=1), reconstruct="auto")
    assert notes["reconstruction"] == "on"
    _, notes, _ = _prune(model, None, reconstruct="auto")
    assert notes["reconstruction"] == "off"


def test_the_input_model_is_not_modified() -> None:
    model = _wide_chain()
    before = ir.to_proto(model).SerializeToString()
    _prune(model, ratio=0.5)
    assert ir.to_proto(model).SerializeToString() == before


def test_pipeline_text_round_trips() -> None:
    text = "prune-channels{ratio=0.3,importance=l2,scope=global,per_node=[c1:0.5],multiple=8,reconstruct=on}"
    passes = parse_pipeline(text)
    assert isinstance(passes[0], PruneChannelsPass)
    assert passes[0].per_node == ("c1:0.5",)
    assert format_pipeline(passes) == text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ratio": 1.0}, "ratio must be in"),
        ({"ratio": -0.1}, "ratio must be in"),
        ({"importance": "taylor"}, "importance must be one of"),
        ({"per_node": ("c1",)}, "name:ratio"),
        ({"per_node": ("c1:1.5",)}, "in [0, 1)"),
        ({"multiple": 0}, "multiple"),
        ({"min_channels": 0}, "min_channels"),
    ],
)
def test_invalid_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(PipelineError, match=re.escape(message)):
        PruneChannelsPass(**options)


@pytest.mark.parametrize("options", [{"importance": "activation"}, {"reconstruct": "on"}])
def test_options_that_need_calibration_data_fail_without_it(options: dict[str, Any]) -> None:
    with pytest.raises(PassFailed, match="needs calibration data"):
        _prune(_wide_chain(), **options)


def test_channel_groups_of_the_pruned_model_are_consistent() -> None:
    """Pruning the pruned model again works: every shape and constant was rewritten consistently."""
    case = _case("attention-heads-computed-shapes", zero=True)
    once, _, _ = _prune(case.model, ratio=0.5)
    groups = ChannelGroups.compute(once)
    heads = groups.group_of("Wq_pruned", 1)
    assert heads is not None and heads.prunable and heads.units == 2 and heads.block == 2
    twice, _, _ = _prune(once, ratio=0.5)
    feeds = _inputs(case.model, 3, seed=1)
    assert _run(twice, feeds)[0].shape == (3, 3, 8)


# --------------------------------------------------------------------------- reconstruction variants and model forms


@pytest.mark.parametrize("name", ["residual-add", "conv-chain", "attention-heads", "gemm-mlp"])
def test_reconstruction_from_pruned_inputs_lowers_the_output_error(name: str) -> None:
    case = _case(name, zero=False)
    calibration = _inputs(case.model, 64, seed=2)
    held_out = _inputs(case.model, 32, seed=3)
    want = _run(case.model, held_out)
    options = {"importance": "l1", "compensate": False, **case.options}  # reconstruction alone
    plain, _, _ = _prune(case.model, calibration, reconstruct="off", **options)
    refit, notes, _ = _prune(case.model, calibration, reconstruct="on", reconstruct_inputs="pruned", **options)
    assert _relative_error(_run(refit, held_out), want) < _relative_error(_run(plain, held_out), want)
    assert any(r.get("applied") for g in notes["pruned_groups"] for r in g["reconstruction"])


def test_fixed_damping_skips_the_cross_validation() -> None:
    case = _case("gemm-mlp", zero=False)
    _, notes, _ = _prune(case.model, _inputs(case.model, 64, seed=2), reconstruct="on", damping=0.002)
    (layer,) = notes["pruned_groups"][0]["reconstruction"]
    assert layer["damping"] == 0.002 and layer["heldout_error_before"] is None
    assert layer["applied"] and layer["error_after"] < layer["error_before"]


def test_reconstruction_is_not_applied_when_the_pruned_channels_were_zero() -> None:
    case = _case("conv-chain", zero=True)
    feeds = _inputs(case.model, 5, seed=1)
    pruned, notes, _ = _prune(case.model, _inputs(case.model, 32, seed=2), reconstruct="on")
    (layer,) = notes["pruned_groups"][0]["reconstruction"]
    assert not layer["applied"]
    np.testing.assert_allclose(_run(pruned, feeds)[0], _run(case.model, feeds)[0], rtol=1e-5, atol=1e-4)


def test_weights_held_by_constant_nodes_are_sliced() -> None:
    w = _Weights(0, zero=True)
    w1 = w.pruned(w.normal(8, 3, 1, 1), 0, [0, 1, 2, 3])
    model = _model(
        """
        constants (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y) {
            c = Conv (x, W1)
            r = Relu (c)
            y = Conv (r, W2)
        }""",
        {"W1": w1, "W2": w.normal(2, 8, 1, 1)},
    )
    constant = ir.Node("", "Constant", [], attributes=[ir.AttrTensor("value", ir.tensor(w1, name="W1c"))], name="W1c")
    constant.outputs[0].name = "W1c"
    model.graph.insert_before(model.graph.node("c"), constant)
    model.graph.node("c").replace_input_with(1, constant.outputs[0])
    del model.graph.initializers["W1"]
    feeds = _inputs(model, 4, seed=1)
    pruned, _, _ = _prune(model, ratio=0.5)
    assert _initializer_of(pruned, "c", 1).shape == (4, 3, 1, 1)
    assert "Constant" not in [n.op_type for n in pruned.graph]
    np.testing.assert_allclose(_run(pruned, feeds)[0], _run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_model_with_external_data_is_pruned_and_reconstructed(tmp_path) -> None:  # noqa: ANN001
    from onnxpq.io import load_model

    case = _case("conv-chain", zero=False)
    proto = ir.to_proto(case.model)
    onnx.save(proto, tmp_path / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.data", size_threshold=0)
    model = load_model(tmp_path / "model.onnx")
    calibration = _inputs(model, 32, seed=2)
    pruned, notes, _ = _prune(model, calibration, reconstruct="on", importance="activation")
    assert _initializer_of(pruned, "c1", 1).shape == (4, 3, 3, 3)
    assert notes["pruned_groups"][0]["reconstruction"][0]["applied"]
    assert _run(pruned, calibration)[0].shape == (32, 4, 8, 8)


def test_split_below_opset_13_rewrites_the_split_attribute() -> None:
    w = _Weights(0, zero=True)
    model = _model(
        """
        split (float[N, 3, 6, 6] x) => (float[N, 2, 6, 6] y) {
            c = Conv (x, W1)
            a, b = Split <axis = 1, split = [4, 4]> (c)
            pa = Conv (a, Wa)
            pb = Conv (b, Wb)
            y = Add (pa, pb)
        }""",
        {"W1": w.pruned(w.normal(8, 3, 1, 1), 0, [1, 2, 5, 6]), "Wa": w.normal(2, 4, 1, 1), "Wb": w.normal(2, 4, 1, 1)},
        opset=12,
    )
    feeds = _inputs(model, 3, seed=1)
    pruned, _, _ = _prune(model)
    assert list(pruned.graph.node("a").attributes["split"].value) == [2, 2]
    np.testing.assert_allclose(_run(pruned, feeds)[0], _run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_then_prune_channels_compose_in_one_pipeline() -> None:
    from onnxpq.passes.cleanup.fold_batchnorm import FoldBatchNormPass

    case = _case("conv-bn-relu", zero=True)
    feeds = _inputs(case.model, 4, seed=1)
    with PassContext():
        manager = PassManager([FoldBatchNormPass(), PruneChannelsPass(0.5, reconstruct="off")], progress=False)
        result = manager(case.model)
    assert [r.modified for r in manager.records] == [True, True]
    assert "BatchNormalization" not in [n.op_type for n in result.model.graph]
    assert _initializer_of(result.model, "c1", 1).shape[0] == 4
    assert _run(result.model, feeds)[0].shape == (4, 4, 8, 8)


def test_a_bias_shared_by_two_layers_gets_a_sliced_copy_per_layer() -> None:
    w = _Weights(0, zero=True)
    model = _model(
        """
        shared_bias (float[N, 6] x) => (float[N, 3] y) {
            h1 = MatMul (x, W1)
            a1 = Add (h1, B)
            r1 = Relu (a1)
            h2 = MatMul (x, W2)
            a2 = Add (h2, B)
            r2 = Relu (a2)
            o1 = MatMul (r1, V1)
            o2 = MatMul (r2, V2)
            y = Add (o1, o2)
        }""",
        {
            "W1": w.pruned(w.normal(6, 8), 1, [0, 1, 2, 3]),
            "W2": w.pruned(w.normal(6, 8), 1, [4, 5, 6, 7]),
            "B": np.zeros(8, np.float32),
            "V1": w.normal(8, 3),
            "V2": w.normal(8, 3),
        },
    )
    feeds = _inputs(model, 4, seed=1)
    pruned, notes, _ = _prune(model, ratio=0.5)
    assert len(notes["pruned_groups"]) == 2
    assert _initializer_of(pruned, "a1", 1).shape == (4,) and _initializer_of(pruned, "a2", 1).shape == (4,)
    assert pruned.graph.node("a1").inputs[1] is not pruned.graph.node("a2").inputs[1]
    assert "B" not in pruned.graph.initializers
    np.testing.assert_allclose(_run(pruned, feeds)[0], _run(model, feeds)[0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- importance after the nonlinearity, compensation


def _constant_channel_model(consumer: str) -> tuple[ir.Model, np.ndarray]:
    """c1's channels 0-3 have zero weights and biases of 1-4 (after Relu: constants); a 1x1 Conv or a Gemm reads them."""
    w = _Weights(0, zero=False)
    w1 = w.normal(8, 3, 1, 1)
    w1[:4] = 0.0
    b1 = np.concatenate([np.arange(1, 5), 0.1 * w.normal(4)]).astype(np.float32)
    if consumer == "conv":
        graph = """
        const (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y) {
            c1 = Conv (x, W1, B1)
            r1 = Relu (c1)
            y = Conv (r1, W2)
        }"""
        weights = {"W1": w1, "B1": b1, "W2": w.normal(2, 8, 1, 1)}
    else:
        graph = """
        const (float[N, 3] x) => (float[N, 2] y) {
            c1 = Gemm <transB = 1> (x, W1, B1)
            r1 = Relu (c1)
            y = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (r1, W2, B2)
        }"""
        weights = {"W1": w1.reshape(8, 3), "B1": b1, "W2": w.normal(2, 8), "B2": w.normal(2)}
    return _model(graph, weights), w1


@pytest.mark.parametrize("consumer", ["conv", "gemm"])
def test_constant_channels_are_folded_into_the_consumer_bias_without_data(consumer: str) -> None:
    model, _ = _constant_channel_model(consumer)
    feeds = _inputs(model, 5, seed=1)
    want = _run(model, feeds)[0]
    compensated, notes, _ = _prune(model, ratio=0.5, importance="l1")
    plain, _, _ = _prune(model, ratio=0.5, importance="l1", compensate=False)
    assert notes["compensation"] == "constant channels"
    assert _initializer_of(compensated, "c1", 1).shape[0] == 4
    np.testing.assert_allclose(_run(compensated, feeds)[0], want, rtol=1e-5, atol=1e-5)
    assert _relative_error(_run(plain, feeds), [want]) > 1e-2  # without it the constants are lost


def test_activation_importance_scores_a_constant_channel_zero_and_compensates_its_mean() -> None:
    # Channels 0-3 have the largest weights but read input channel 0, which is constant (2.0) in the data:
    # after Relu they are constants, not zero. L1 keeps them; activation importance removes them.
    w = _Weights(0, zero=False)
    w1 = w.normal(8, 3, 1, 1)
    w1[:4, 0] = 10.0
    w1[:4, 1:] = 0.0
    graph = """
    act (float[N, 3, 4, 4] x) => (float[N, 2, 4, 4] y) {
        c = Conv (x, W1)
        r = Relu (c)
        y = Conv (r, W2, B2)
    }"""
    model = _model(graph, {"W1": w1, "W2": w.normal(2, 8, 1, 1), "B2": w.normal(2)})
    data = _inputs(model, 16, seed=1)
    data["x"][:, 0] = 2.0
    pruned, notes, _ = _prune(model, data, ratio=0.5)  # importance auto -> activation with data
    assert notes["importance"] == "activation" and notes["compensation"] == "measured means"
    np.testing.assert_array_equal(_initializer_of(pruned, "c", 1), w1[4:])
    np.testing.assert_allclose(_run(pruned, data)[0], _run(model, data)[0], rtol=1e-4, atol=1e-4)
    l1, _, _ = _prune(model, data, ratio=0.5, importance="l1")
    np.testing.assert_array_equal(_initializer_of(l1, "c", 1), w1[:4])


def test_compensation_keeps_the_mean_of_the_consumer_output() -> None:
    case = _case("conv-chain", zero=False)
    data = _inputs(case.model, 64, seed=2)
    want = _run(case.model, data)[0]
    for compensate, close in ((True, True), (False, False)):
        pruned, _, _ = _prune(case.model, data, ratio=0.5, importance="l1", compensate=compensate)
        shift = np.abs(_run(pruned, data)[0].mean(axis=(0, 2, 3)) - want.mean(axis=(0, 2, 3))).max()
        assert (shift < 0.02 * np.abs(want).mean()) == close, (compensate, shift)


def test_constant_channels_of_a_matmul_mlp_are_folded_into_the_following_add() -> None:
    w = _Weights(0, zero=False)
    w1 = w.normal(3, 8)
    w1[:, :4] = 0.0
    b1 = np.concatenate([np.arange(1, 5), 0.1 * w.normal(4)]).astype(np.float32)
    graph = """
    mlp (float[N, 5, 3] x) => (float[N, 5, 2] y) {
        h = MatMul (x, W1)
        hb = Add (h, B1)
        r = Relu (hb)
        o = MatMul (r, W2)
        y = Add (o, B2)
    }"""
    model = _model(graph, {"W1": w1, "B1": b1, "W2": w.normal(8, 2), "B2": w.normal(2)})
    feeds = _inputs(model, 4, seed=1)
    pruned, notes, _ = _prune(model, ratio=0.5, importance="l1")
    assert _initializer_of(pruned, "h", 1).shape == (3, 4)
    assert notes["compensation"] == "constant channels"
    np.testing.assert_allclose(_run(pruned, feeds)[0], _run(model, feeds)[0], rtol=1e-5, atol=1e-5)
    plain, _, _ = _prune(model, ratio=0.5, importance="l1", compensate=False)
    assert _relative_error(_run(plain, feeds), _run(model, feeds)) > 1e-2
