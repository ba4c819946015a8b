"""The hostile-input corpus: models a user (or an attacker) can hand to ``onnxpq``, built from code.

Nothing binary is committed. :func:`build_case` writes one case into a folder,
:func:`build_corpus` writes all of them; run as a script to materialise the
corpus for manual poking::

    python tests/trust/hostile_corpus.py /tmp/corpus        # one sub-folder per case
    onnxpq optimize /tmp/corpus/ext-dotdot/model/m.onnx -o /tmp/out.onnx

Each case folder has ``model/m.onnx`` (the file handed to onnxpq, possibly not
ONNX at all) and ``outside/`` (files "elsewhere on the disk" that external-data
references try to reach). A case says what onnxpq must do with it:

* ``refuse``: exit 2, one ``onnxpq: error:`` line matching ``reason``, nothing
  written, the input folder byte-for-byte unchanged;
* ``ok``: the model is legal; exit 0 and the output computes what the input
  computes (compared in onnxruntime on ``feeds``).

Models use onnx.helper; sizes are tiny except where a case is *about* size
(the terabyte ConstantOfShape asks for it at run time, never on disk).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Case", "CASES", "build_case", "build_corpus", "feeds_for"]

OPSET = 21
IR_VERSION = 10
#: y = Relu(x @ W): W is [4, 3] float32 (48 bytes).
WEIGHT = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0) / 4.0
#: The exact pipeline legal cases run through: outputs must match the input model.
EXACT_PIPELINE = "constants-to-initializers,eliminate-identity,eliminate-dead"

Builder = Callable[[Path, Path], onnx.ModelProto | bytes | None]


@dataclass(frozen=True)
class Case:
    """One hostile input and what onnxpq must do with it."""

    name: str
    expect: str  # "refuse" | "ok"
    build: Builder  # (model_dir, outside_dir) -> the model (proto or raw bytes; None: the builder wrote m.onnx itself)
    reason: str = ""  # regex the one-line error must match (refuse)
    argv: tuple[str, ...] = ()  # extra optimize options; "{model_dir}" stands for the case's model folder
    feeds: dict[str, Callable[[np.random.Generator], np.ndarray]] = field(default_factory=dict)  # ok: explicit inputs


# --------------------------------------------------------------------------- building blocks


def vi(name: str, elem: int = TensorProto.FLOAT, shape: list[int | str] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def model_of(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[TensorProto] = (),  # type: ignore[assignment]
    *,
    opsets: tuple[tuple[str, int], ...] = (("", OPSET),),
    functions: list[onnx.FunctionProto] = (),  # type: ignore[assignment]
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], functions=list(functions)
    )
    model.ir_version = IR_VERSION
    return model


def tiny(weight: np.ndarray = WEIGHT) -> onnx.ModelProto:
    """``y = Relu(x @ W)``, ``x: float[N, 4]``."""
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        [vi("x", shape=["N", 4])],
        [vi("y", shape=["N", 3])],
        [numpy_helper.from_array(weight, "W")],
    )


def edited(change: Callable[[onnx.ModelProto], None], base: Callable[[], onnx.ModelProto] = tiny) -> Builder:
    def build(_: Path, __: Path) -> onnx.ModelProto:
        model = base()
        change(model)
        return model

    return build


def raw(data: bytes | Callable[[], bytes]) -> Builder:
    return lambda _, __: data() if callable(data) else data


def make_external(tensor: TensorProto, location: str, offset: int | str | None = 0, length: int | str | None = None) -> None:
    """Turn ``tensor`` into an external-data reference (its own bytes are dropped)."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            tensor.external_data.add(key=key, value=str(value))


def external(kind: str) -> Builder:
    """The tiny model with W in an external file arranged as ``kind`` says."""

    def build(model_dir: Path, outside: Path) -> onnx.ModelProto:
        weight = WEIGHT.tobytes()
        (outside / "w.bin").write_bytes(weight)
        location, offset, length = "w.bin", 0, 48
        if kind == "absolute":
            location = str(outside / "w.bin")
        elif kind == "dotdot":
            location = "../outside/w.bin"
        elif kind == "symlink":
            (model_dir / "w.bin").symlink_to(outside / "w.bin")
        elif kind == "symlinked-folder":
            (model_dir / "sub").symlink_to(outside, target_is_directory=True)
            location = "sub/w.bin"
        elif kind == "hardlink":
            os.link(outside / "w.bin", model_dir / "w.bin")
        elif kind == "missing":
            pass
        elif kind == "directory":
            (model_dir / "w.bin").mkdir()
        elif kind == "fifo":
            os.mkfifo(model_dir / "w.bin")
        else:
            (model_dir / "w.bin").write_bytes(weight + bytes(16))  # 64 bytes
            offset, length = {
                "offset-beyond-end": (80, 48),
                "length-beyond-end": (32, 48),
                "length-disagrees": (0, 52),
                "negative-offset": (-4, 48),
                "huge-offset": (2**63 - 1, 48),
                "unknown-key": (0, 48),
                "duplicate-key": (0, 48),
                "valid-subfolder": (0, 48),
            }[kind]
            if kind == "valid-subfolder":
                (model_dir / "w.bin").unlink()
                (model_dir / "data").mkdir()
                (model_dir / "data" / "w.bin").write_bytes(weight)
                location = "data/w.bin"
        model = tiny()
        make_external(model.graph.initializer[0], location, offset, length)
        if kind == "unknown-key":
            model.graph.initializer[0].external_data.add(key="offsett", value="16")
        elif kind == "duplicate-key":
            model.graph.initializer[0].external_data.add(key="offset", value="16")
        return model

    return build


def nested_ifs(depth: int) -> onnx.ModelProto:
    """``depth`` If nodes, each the then-branch of the one above; the innermost computes Relu(x @ W)."""
    inner = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h0"]), helper.make_node("Relu", ["h0"], ["t0"])], "g0", [], [vi("t0", shape=["N", 3])]
    )
    for level in range(1, depth + 1):
        else_branch = helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], [f"e{level}"])], f"e{level}", [], [vi(f"e{level}", shape=["N", 3])]
        )
        node = helper.make_node("If", ["cond"], [f"t{level}"], then_branch=inner, else_branch=else_branch)
        inner = helper.make_graph([node], f"g{level}", [], [vi(f"t{level}", shape=["N", 3])])
    model = model_of(list(inner.node), [vi("x", shape=["N", 4]), vi("cond", TensorProto.BOOL, [])], [vi(f"t{depth}", shape=["N", 3])],
                     [numpy_helper.from_array(WEIGHT, "W")])  # fmt: skip
    return model


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_message(depth: int) -> bytes:
    """A ModelProto whose graph nests ``depth`` If subgraphs, written as raw protobuf wire bytes.

    The python protobuf runtime refuses to build or parse messages nested past
    its depth limit (100), so the wrapping is done on bytes:
    GraphProto.node = 1, NodeProto.attribute = 5, AttributeProto.g = 6, ModelProto.graph = 7.
    """
    shallow = nested_ifs(1)
    graph = shallow.graph.SerializeToString()
    for _ in range(depth):
        node = helper.make_node("If", ["cond"], ["t1"])
        attribute = helper.make_attribute("then_branch", helper.make_graph([], "g", [], []))
        attribute.ClearField("g")
        wrapped_attribute = attribute.SerializeToString() + _field(6, graph)
        node_bytes = node.SerializeToString() + _field(5, wrapped_attribute)
        graph = _field(1, node_bytes) + _field(12, vi("t1", shape=["N", 3]).SerializeToString())
    model = onnx.ModelProto()
    model.CopyFrom(shallow)
    model.ClearField("graph")
    return model.SerializeToString() + _field(7, graph)


def with_nonfinite(value: float) -> onnx.ModelProto:
    weight = WEIGHT.copy()
    weight[1, 2] = value
    return tiny(weight)


def constant_of_shape(count: int) -> onnx.ModelProto:
    """y = Relu(x @ W) + ReduceSum(ConstantOfShape([count])): asks for ``count`` floats at run time."""
    shape = numpy_helper.from_array(np.array([count], dtype=np.int64), "shape")
    return model_of(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
            helper.make_node("ConstantOfShape", ["shape"], ["big"], name="huge",
                             value=numpy_helper.from_array(np.array([1.0], np.float32), "v")),  # fmt: skip
            helper.make_node("ReduceSum", ["big"], ["s"], name="sum", keepdims=0),
            helper.make_node("Add", ["h", "s"], ["y"], name="add"),
        ],
        [vi("x", shape=["N", 4])],
        [vi("y", shape=["N", 3])],
        [numpy_helper.from_array(WEIGHT, "W"), shape],
    )


def _short_raw(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].raw_data = WEIGHT.tobytes()[:20]


def _long_raw(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].raw_data = WEIGHT.tobytes() + bytes(8)


def _short_float_data(model: onnx.ModelProto) -> None:
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.float_data.extend([1.0] * 5)


def _dims(*dims: int) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        del model.graph.initializer[0].dims[:]
        model.graph.initializer[0].dims.extend(dims)

    return change


def _dtype(code: int) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        model.graph.initializer[0].data_type = code

    return change


def _replace_nodes(*nodes: onnx.NodeProto, outputs: tuple[str, ...] = ("y",), extra: list[TensorProto] = ()) -> Callable[[onnx.ModelProto], None]:  # type: ignore[assignment]
    def change(model: onnx.ModelProto) -> None:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        del model.graph.output[:]
        model.graph.output.extend(vi(name, shape=["N", 3]) for name in outputs)
        model.graph.initializer.extend(extra)

    return change


def _opsets(*entries: tuple[str, int]) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        del model.opset_import[:]
        model.opset_import.extend(helper.make_opsetid(d, v) for d, v in entries)

    return change


def _set(**fields: int) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        for name, value in fields.items():
            setattr(model, name, value)

    return change


def _recursive_function() -> onnx.ModelProto:
    """A model-local function that calls itself: inlining it never ends."""
    body = [helper.make_node("Loopy", ["a"], ["b"], domain="local")]
    function = helper.make_function("local", "Loopy", ["a"], ["b"], body, [helper.make_opsetid("", OPSET), helper.make_opsetid("local", 1)])
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Loopy", ["h"], ["y"], domain="local")],
        [vi("x", shape=["N", 4])], [vi("y", shape=["N", 3])], [numpy_helper.from_array(WEIGHT, "W")],
        opsets=(("", OPSET), ("local", 1)), functions=[function],
    )  # fmt: skip


def _sparse_out_of_range() -> onnx.ModelProto:
    model = tiny()
    del model.graph.initializer[:]
    values = numpy_helper.from_array(np.ones(3, np.float32), "W")
    indices = numpy_helper.from_array(np.array([0, 5, 1000], dtype=np.int64), "W_idx")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4, 3]))
    return model


# --------------------------------------------------------------------------- legal models


def _zero_size() -> onnx.ModelProto:
    """Concat(Relu(x @ W), Z) along axis 0 with Z: float[0, 3]; plus a zero-size ReduceSum."""
    zero = numpy_helper.from_array(np.zeros((0, 3), np.float32), "Z")
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Concat", ["r", "Z"], ["y"], axis=0)],
        [vi("x", shape=["N", 4])], [vi("y", shape=["M", 3])], [numpy_helper.from_array(WEIGHT, "W"), zero],
    )  # fmt: skip


def _if_model() -> onnx.ModelProto:
    return nested_ifs(2)


def _loop_model() -> onnx.ModelProto:
    """Three Loop iterations of h = Relu(h @ W2), W2 [3, 3] from the outer scope."""
    w2 = numpy_helper.from_array(np.eye(3, dtype=np.float32) * 0.5 + 0.1, "W2")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "W2"], ["m"]), helper.make_node("Relu", ["m"], ["h_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("h_in", shape=["N", 3])],
        [vi("cond_out", TensorProto.BOOL, []), vi("h_out", shape=["N", 3])],
    )  # fmt: skip
    trip = numpy_helper.from_array(np.array(3, np.int64), "trip")
    true = numpy_helper.from_array(np.array(True), "true")
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Loop", ["trip", "true", "h"], ["y"], body=body)],
        [vi("x", shape=["N", 4])], [vi("y", shape=["N", 3])], [numpy_helper.from_array(WEIGHT, "W"), w2, trip, true],
    )  # fmt: skip


def _scan_model() -> onnx.ModelProto:
    """A running sum over the rows of x @ W with Scan."""
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "row"], ["acc_out"]), helper.make_node("Identity", ["acc_out"], ["out_row"])],
        "body", [vi("acc_in", shape=[3]), vi("row", shape=[3])], [vi("acc_out", shape=[3]), vi("out_row", shape=[3])],
    )  # fmt: skip
    init = numpy_helper.from_array(np.zeros(3, np.float32), "acc0")
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("Scan", ["acc0", "h"], ["total", "y"], body=body, num_scan_inputs=1)],
        [vi("x", shape=["N", 4])], [vi("y", shape=["N", 3]), vi("total", shape=[3])], [numpy_helper.from_array(WEIGHT, "W"), init],
    )  # fmt: skip


def _dynamic_dims(model_dir: Path, _: Path) -> onnx.ModelProto:
    """Every dim symbolic or unknown: y = Relu(x @ W), x: float[?, K]; K must be 4, so data comes with it."""
    model = tiny()
    del model.graph.input[:]
    model.graph.input.append(vi("x", shape=[None, "K"]))
    del model.graph.output[:]
    model.graph.output.append(vi("y", shape=[None, None]))
    np.savez(model_dir / "data.npz", x=np.random.default_rng(3).standard_normal((16, 4)).astype(np.float32))
    return model


def _shared_weights() -> onnx.ModelProto:
    """One initializer feeds two MatMuls and an Add."""
    square = numpy_helper.from_array(np.eye(3, dtype=np.float32) + 0.25, "S")
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "S"], ["a"]),
         helper.make_node("MatMul", ["a", "S"], ["b"]), helper.make_node("Add", ["b", "S"], ["c"]),
         helper.make_node("Relu", ["c"], ["y"])],
        [vi("x", shape=[3, 4])], [vi("y", shape=[3, 3])], [numpy_helper.from_array(WEIGHT, "W"), square],
    )  # fmt: skip


def _string_initializer() -> onnx.ModelProto:
    """A class-name lookup: labels[ArgMax(x @ W)] (a string output) beside the float one."""
    labels = numpy_helper.from_array(np.array(["cat", "dog", "emu"], dtype=object), "labels")
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("ArgMax", ["y"], ["k"], axis=1, keepdims=0),
         helper.make_node("Gather", ["labels", "k"], ["name"])],
        [vi("x", shape=["N", 4])], [vi("y", shape=["N", 3]), vi("name", TensorProto.STRING, ["N"])],
        [numpy_helper.from_array(WEIGHT, "W"), labels],
    )  # fmt: skip


def _bool_initializer() -> onnx.ModelProto:
    mask = numpy_helper.from_array(np.array([True, False, True]), "mask")
    zero = numpy_helper.from_array(np.zeros(1, np.float32), "zero")
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Where", ["mask", "h", "zero"], ["y"])],
        [vi("x", shape=["N", 4])], [vi("y", shape=["N", 3])], [numpy_helper.from_array(WEIGHT, "W"), mask, zero],
    )  # fmt: skip


def _initializer_as_input() -> onnx.ModelProto:
    model = tiny()
    model.graph.input.append(vi("W", shape=[4, 3]))
    model.ir_version = 3  # before ir 4, every initializer had to be a graph input
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 9))
    return model


def _local_function() -> onnx.ModelProto:
    body = [helper.make_node("MatMul", ["a", "w"], ["m"]), helper.make_node("Relu", ["m"], ["b"])]
    function = helper.make_function("local", "Dense", ["a", "w"], ["b"], body, [helper.make_opsetid("", OPSET)])
    return model_of(
        [helper.make_node("Dense", ["x", "W"], ["y"], domain="local")],
        [vi("x", shape=["N", 4])], [vi("y", shape=["N", 3])], [numpy_helper.from_array(WEIGHT, "W")],
        opsets=(("", OPSET), ("local", 1)), functions=[function],
    )  # fmt: skip


def _constant_node() -> onnx.ModelProto:
    model = tiny()
    del model.graph.initializer[:]
    model.graph.node.insert(0, helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(WEIGHT, "Wc")))
    return model


def _dead_code_and_identity() -> onnx.ModelProto:
    model = tiny()
    model.graph.node.append(helper.make_node("Identity", ["h"], ["unused"]))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(5, np.float32), "orphan"))
    return model


def _float16_weights() -> onnx.ModelProto:
    w16 = numpy_helper.from_array(WEIGHT.astype(np.float16), "W16")
    return model_of(
        [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16), helper.make_node("MatMul", ["x16", "W16"], ["h16"]),
         helper.make_node("Cast", ["h16"], ["y"], to=TensorProto.FLOAT)],
        [vi("x", shape=["N", 4])], [vi("y", shape=["N", 3])], [w16],
    )  # fmt: skip


def _int_inputs() -> onnx.ModelProto:
    """An embedding lookup with int64 indices."""
    table = numpy_helper.from_array(np.arange(30, dtype=np.float32).reshape(10, 3) / 7.0, "table")
    return model_of(
        [helper.make_node("Gather", ["table", "ids"], ["y"])],
        [vi("ids", TensorProto.INT64, ["N"])], [vi("y", shape=["N", 3])], [table],
    )  # fmt: skip


def _float_feed(rows: int = 5, cols: int = 4) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.standard_normal((rows, cols)).astype(np.float32)


def _const(value: np.ndarray) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda _: value


_X = {"x": _float_feed()}
_NONFINITE_WARN = ("--nonfinite-weights", "warn")

CASES: dict[str, Case] = {
    case.name: case
    for case in [
        # ---- not an ONNX model at all
        Case("random-bytes", "refuse", raw(np.random.default_rng(7).bytes(4096)), "not an ONNX model"),
        Case("empty-file", "refuse", raw(b""), "empty"),
        Case("truncated-half", "refuse", raw(lambda: tiny().SerializeToString()[:60]), "not an ONNX model|truncated"),
        Case("truncated-last-byte", "refuse", raw(lambda: tiny().SerializeToString()[:-1]), "not an ONNX model|truncated"),
        Case("wrong-message-graph", "refuse", raw(lambda: tiny().graph.SerializeToString()), "ir_version is 0"),
        Case("wrong-message-tensor", "refuse", raw(lambda: numpy_helper.from_array(WEIGHT, "W").SerializeToString()), "not an ONNX model|ir_version"),
        Case("wrong-message-node", "refuse", raw(lambda: helper.make_node("Relu", ["x"], ["y"]).SerializeToString()), "not an ONNX model|ir_version"),
        Case("text-file", "refuse", raw(b"ir_version: 10\ngraph { }\n"), "not an ONNX model"),
        Case("model-is-directory", "refuse", lambda d, _: (d / "m.onnx").mkdir(), "not a regular file"),
        # ---- header
        Case("ir-version-0", "refuse", edited(_set(ir_version=0)), "ir_version is 0"),
        Case("ir-version-99", "refuse", edited(_set(ir_version=99)), "ir_version 99"),
        Case("no-opset-import", "refuse", edited(_opsets()), "no default-domain opset"),
        Case("future-opset", "refuse", edited(_opsets(("", 99))), "opset 99 is newer"),
        Case("opset-0", "refuse", edited(_opsets(("", 0))), "opset version 0"),
        Case("unimported-domain", "refuse", edited(_replace_nodes(
            helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"], domain="com.example"))), "com.example"),
        Case("imported-unknown-domain", "refuse", edited(lambda m: (
            m.opset_import.append(helper.make_opsetid("com.example", 1)),
            _replace_nodes(helper.make_node("MatMul", ["x", "W"], ["h"]),
                           helper.make_node("Mystery", ["h"], ["y"], domain="com.example"))(m))), "com.example"),
        Case("unknown-op", "refuse", edited(_replace_nodes(
            helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("NoSuchOp", ["h"], ["y"]))), "NoSuchOp"),
        # ---- graph structure
        Case("cycle", "refuse", edited(_replace_nodes(
            helper.make_node("Add", ["x", "b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="second"),
            outputs=("b",))), "cycle"),
        Case("dangling-input", "refuse", edited(_replace_nodes(
            helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "ghost"], ["y"]))), "ghost"),
        Case("duplicate-node-output", "refuse", edited(_replace_nodes(
            helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["h"]),
            helper.make_node("Identity", ["h"], ["y"]))), "'h' is defined twice"),
        Case("duplicate-initializer", "refuse", edited(lambda m: m.graph.initializer.append(numpy_helper.from_array(WEIGHT * 2, "W"))),
             "'W' is defined twice"),
        Case("duplicate-graph-input", "refuse", edited(lambda m: m.graph.input.append(vi("x", shape=["N", 4]))), "'x' is defined twice"),
        Case("output-not-produced", "refuse", edited(lambda m: m.graph.output.append(vi("z", shape=["N", 3]))), "'z'"),
        Case("no-graph-outputs", "refuse", edited(lambda m: m.graph.ClearField("output")), "no graph outputs"),
        Case("recursive-function", "refuse", lambda _, __: _recursive_function(), "Loopy|recursi|function"),
        Case("nesting-past-protobuf-limit", "refuse", raw(lambda: deep_message(120)), "not an ONNX model|nest"),
        Case("attribute-wrong-type", "refuse", edited(_replace_nodes(
            helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis="one"))), "axis|attribute"),
        # ---- tensors
        Case("raw-data-too-short", "refuse", edited(_short_raw), r"\bW\b.*(bytes|size)"),
        Case("raw-data-too-long", "refuse", edited(_long_raw), r"'W'.*holds 56 bytes.*need 48"),
        Case("float-data-count-wrong", "refuse", edited(_short_float_data), r"\bW\b.*(values|size)"),
        Case("negative-dim", "refuse", edited(_dims(-4, 3)), r"'W'.*negative"),
        Case("absurd-dims", "refuse", edited(_dims(2**31, 2**31, 2**31)), r"'W'.*holds 48 bytes"),
        Case("dims-overflow-int64", "refuse", edited(_dims(2**62, 2**62)), r"'W'.*holds 48 bytes"),
        Case("undefined-dtype", "refuse", edited(_dtype(0)), r"'W'.*UNDEFINED"),
        Case("invalid-dtype", "refuse", edited(_dtype(999)), r"'W'.*unknown data type 999"),
        Case("sparse-indices-out-of-range", "refuse", lambda _, __: _sparse_out_of_range(), "sparse initializer 'W' is not supported"),
        Case("nan-weight", "refuse", lambda _, __: with_nonfinite(float("nan")), r"'W'.*(NaN|non-finite)"),
        Case("inf-weight", "refuse", lambda _, __: with_nonfinite(float("inf")), r"'W'.*(Inf|non-finite)"),
        Case("constant-of-shape-terabytes", "refuse", lambda _, __: constant_of_shape(2**40), "memory|allocat|huge|too large"),
        # ---- external data
        Case("ext-absolute", "refuse", external("absolute"), "absolute"),
        Case("ext-dotdot", "refuse", external("dotdot"), r"'\.\.'"),
        Case("ext-symlink", "refuse", external("symlink"), "symlink"),
        Case("ext-symlinked-folder", "refuse", external("symlinked-folder"), "symlink"),
        Case("ext-hardlink", "refuse", external("hardlink"), "hard link"),
        Case("ext-missing", "refuse", external("missing"), "does not exist"),
        Case("ext-directory", "refuse", external("directory"), "not a regular file"),
        Case("ext-fifo", "refuse", external("fifo"), "not a regular file"),
        Case("ext-offset-beyond-end", "refuse", external("offset-beyond-end"), "outside the 64-byte file"),
        Case("ext-length-beyond-end", "refuse", external("length-beyond-end"), "outside the 64-byte file"),
        Case("ext-length-disagrees", "refuse", external("length-disagrees"), "disagrees"),
        Case("ext-negative-offset", "refuse", external("negative-offset"), "negative"),
        Case("ext-huge-offset", "refuse", external("huge-offset"), "outside"),
        Case("ext-unknown-key", "refuse", external("unknown-key"), r"unknown external data key.*offsett"),
        Case("ext-duplicate-key", "refuse", external("duplicate-key"), "given twice"),
        Case("name-not-utf8", "refuse", raw(lambda: tiny().SerializeToString().replace(b"relu", b"r\xf6lu")), "not valid UTF-8"),
        Case("name-with-newline", "refuse", edited(_replace_nodes(
            helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "gh\nost"], ["y"]))), r"gh\\nost"),
        # ---- legal: must succeed with the same outputs
        Case("zero-size-initializer", "ok", lambda _, __: _zero_size(), feeds=_X),
        Case("zero-batch-input", "ok", lambda _, __: tiny(), feeds={"x": _const(np.zeros((0, 4), np.float32))}),
        Case("if-subgraph", "ok", lambda _, __: _if_model(), feeds={**_X, "cond": _const(np.array(True))}),
        Case("nesting-deep-but-legal", "ok", lambda _, __: nested_ifs(20), feeds={**_X, "cond": _const(np.array(True))}),
        Case("loop", "ok", lambda _, __: _loop_model(), feeds=_X),
        Case("scan", "ok", lambda _, __: _scan_model(), feeds=_X),
        Case("dynamic-dims", "ok", _dynamic_dims, argv=("--data", "{model_dir}/data.npz"), feeds=_X),
        Case("shared-weights", "ok", lambda _, __: _shared_weights(), feeds={"x": _float_feed(3)}),
        Case("string-initializer", "ok", lambda _, __: _string_initializer(), feeds=_X),
        Case("bool-initializer", "ok", lambda _, __: _bool_initializer(), feeds=_X),
        Case("initializer-listed-as-input", "ok", lambda _, __: _initializer_as_input(), feeds=_X),
        Case("local-function", "ok", lambda _, __: _local_function(), feeds=_X),
        Case("constant-node", "ok", lambda _, __: _constant_node(), feeds=_X),
        Case("dead-code", "ok", lambda _, __: _dead_code_and_identity(), feeds=_X),
        Case("float16-weights", "ok", lambda _, __: _float16_weights(), feeds=_X),
        Case("integer-input", "ok", lambda _, __: _int_inputs(), feeds={"ids": _const(np.array([0, 9, 3, 3], np.int64))}),
        Case("ext-valid-subfolder", "ok", external("valid-subfolder"), feeds=_X),
        Case("nan-weight-warn", "ok", lambda _, __: with_nonfinite(float("nan")), argv=_NONFINITE_WARN, feeds=_X),
    ]
}


def build_case(case: Case | str, root: Path) -> Path:
    """Write ``case`` under ``root`` (``root/model/m.onnx`` and ``root/outside/``); return the model path."""
    case = CASES[case] if isinstance(case, str) else case
    model_dir, outside = root / "model", root / "outside"
    model_dir.mkdir(parents=True, exist_ok=True)
    outside.mkdir(exist_ok=True)
    path = model_dir / "m.onnx"
    built = case.build(model_dir, outside)
    if isinstance(built, onnx.ModelProto):
        path.write_bytes(built.SerializeToString())
    elif isinstance(built, bytes):
        path.write_bytes(built)
    return path


def build_corpus(root: Path) -> dict[str, Path]:
    """Write every case into ``root/<case name>/``; return name -> model path."""
    return {name: build_case(case, root / name) for name, case in CASES.items()}


def feeds_for(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    """The inputs a legal case is compared on (seeded)."""
    rng = np.random.default_rng(seed)
    return {name: make(rng) for name, make in case.feeds.items()}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/trust/hostile_corpus.py OUT_DIR")
    for case_name, model_path in build_corpus(Path(sys.argv[1])).items():
        sys.stdout.write(f"{CASES[case_name].expect:7s} {case_name:32s} {model_path}\n")
