"""Fixtures shared by test_io.py and test_cli_bad_input.py: a tiny model and broken ones, built in the test.

Nothing binary is committed: every model is made here with ``onnx.helper`` or
from raw bytes. Broken models are written under ``tmp_path / "in"``: the model
sits in ``in/model/`` and whatever it points to "elsewhere on the disk" in
``in/outside/``, so a test can hash the whole ``in/`` tree before and after.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 21
IR_VERSION = 10

#: The tiny model's weight: [4, 3] float32, 48 bytes.
TINY_WEIGHT = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0) / 4.0


def matmul_relu_model(weight: np.ndarray = TINY_WEIGHT) -> onnx.ModelProto:
    """``y = Relu(x @ W)`` with ``x: float[N, K]`` and the initializer ``W: float[K, M]``."""
    k, m = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def make_external(tensor: TensorProto, location: str, offset: int | str | None = 0, length: int | str | None = None) -> None:
    """Turn ``tensor`` into an external-data reference (its own bytes are dropped)."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            tensor.external_data.add(key=key, value=str(value))


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    """A valid tiny model at ``tmp_path/in/model/tiny.onnx`` (inline weights)."""
    folder = tmp_path / "in" / "model"
    folder.mkdir(parents=True)
    path = folder / "tiny.onnx"
    onnx.save(matmul_relu_model(), path)
    return path


# --------------------------------------------------------------------------- structurally broken models


def _edit(change: Callable[[onnx.ModelProto], None]) -> Callable[[Path], bytes]:
    def build(_: Path) -> bytes:
        model = matmul_relu_model()
        change(model)
        return model.SerializeToString()

    return build


def _set(**fields: int) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        for name, value in fields.items():
            setattr(model, name, value)

    return change


def _graph(*nodes: onnx.NodeProto, outputs: tuple[str, ...] = ("y",), extra_init: int = 0) -> Callable[[onnx.ModelProto], None]:
    """Replace the tiny model's nodes (and outputs), keeping its input ``x`` and initializer ``W``."""

    def change(model: onnx.ModelProto) -> None:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        del model.graph.output[:]
        model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3]) for name in outputs)
        for _ in range(extra_init):
            model.graph.initializer.append(numpy_helper.from_array(TINY_WEIGHT, "W"))

    return change


def _opsets(*entries: tuple[str, int]) -> Callable[[onnx.ModelProto], None]:
    def change(model: onnx.ModelProto) -> None:
        del model.opset_import[:]
        model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in entries)

    return change


def _if_with_then_node(node: onnx.NodeProto) -> Callable[[onnx.ModelProto], None]:
    """The tiny model followed by an If whose then-branch runs ``node`` (output ``t``)."""

    def change(model: onnx.ModelProto) -> None:
        then_branch = helper.make_graph([node], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 3])])
        else_branch = helper.make_graph(
            [helper.make_node("Identity", ["h"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 3])]
        )
        model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
        model.graph.node.append(
            helper.make_node("If", ["cond"], ["z"], name="if", then_branch=then_branch, else_branch=else_branch)
        )
        model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3]))

    return change


def _strip_outputs(model: onnx.ModelProto) -> None:
    del model.graph.output[:]


#: kind -> (regex the error message must match, builder writing the bytes; None writes nothing).
_MALFORMED: dict[str, tuple[str, Callable[[Path], bytes | None]]] = {
    "empty-file": ("the file is empty", lambda _: b""),
    "random-bytes": ("not an ONNX model", lambda _: np.random.default_rng(20240611).bytes(4096)),
    "truncated-model": ("not an ONNX model", lambda _: (data := matmul_relu_model().SerializeToString())[: len(data) // 2]),
    "graph-proto": ("ir_version is 0", lambda _: matmul_relu_model().graph.SerializeToString()),
    "tensor-proto": ("not an ONNX model", lambda _: numpy_helper.from_array(TINY_WEIGHT, "W").SerializeToString()),
    "text-file": ("not an ONNX model", lambda _: b"ir_version: 10\nthis is not a protobuf\n"),
    "ir-version-0": ("ir_version is 0", _edit(_set(ir_version=0))),
    "ir-version-99": ("ir_version 99 is newer", _edit(_set(ir_version=99))),
    "no-opset-import": ("no default-domain opset", _edit(_opsets())),
    "default-opset-99": ("opset 99 is newer", _edit(_opsets(("", 99)))),
    "unimported-domain": (
        "domain 'com.example'",
        _edit(
            _graph(
                helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
                helper.make_node("Relu", ["h"], ["y"], name="relu", domain="com.example"),
            )
        ),
    ),
    "subgraph-unimported-domain": (
        "com.example",
        _edit(_if_with_then_node(helper.make_node("Relu", ["h"], ["t"], name="inner", domain="com.example"))),
    ),
    "cycle": (
        "cycle",
        _edit(
            _graph(
                helper.make_node("Add", ["x", "b"], ["a"], name="first"),
                helper.make_node("Relu", ["a"], ["b"], name="second"),
                outputs=("b",),
            )
        ),
    ),
    "nodes-out-of-order": (
        "out of order",
        _edit(
            _graph(
                helper.make_node("Relu", ["h"], ["y"], name="relu"),
                helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
            )
        ),
    ),
    "dangling-input": (
        "'ghost', which nothing defines",
        _edit(
            _graph(
                helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
                helper.make_node("Add", ["h", "ghost"], ["y"], name="add"),
            )
        ),
    ),
    "subgraph-dangling-input": (
        "then_branch.*'ghost', which nothing defines",
        _edit(_if_with_then_node(helper.make_node("Relu", ["ghost"], ["t"], name="inner"))),
    ),
    "duplicate-node-output": (
        "'h' is defined twice",
        _edit(
            _graph(
                helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
                helper.make_node("Relu", ["h"], ["h"], name="relu"),
                helper.make_node("Identity", ["h"], ["y"], name="id"),
            )
        ),
    ),
    "duplicate-initializer": (
        "'W' is defined twice",
        _edit(
            _graph(
                helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
                helper.make_node("Relu", ["h"], ["y"], name="relu"),
                extra_init=1,
            )
        ),
    ),
    "output-not-produced": (
        "'z' is not produced",
        _edit(
            _graph(
                helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
                helper.make_node("Relu", ["h"], ["y"], name="relu"),
                outputs=("y", "z"),
            )
        ),
    ),
    "no-graph-outputs": ("no graph outputs", _edit(_strip_outputs)),
    "unknown-op": (
        "checker refused.*NoSuchOp",
        _edit(
            _graph(
                helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
                helper.make_node("NoSuchOp", ["h"], ["y"], name="mystery"),
            )
        ),
    ),
    "directory": ("not a regular file", lambda path: path.mkdir()),
    "missing-path": ("no such file", lambda _: None),
}

MALFORMED_KINDS = tuple(_MALFORMED)


class BadModel(NamedTuple):
    path: Path
    reason: str  # a regex the error message must match


@pytest.fixture(params=MALFORMED_KINDS)
def malformed_model(request: pytest.FixtureRequest, tmp_path: Path) -> BadModel:
    """A path (``in/model/m.onnx``) that is not a loadable model: one structural defect per parameter."""
    folder = tmp_path / "in" / "model"
    folder.mkdir(parents=True)
    path = folder / "m.onnx"
    reason, build = _MALFORMED[request.param]
    data = build(path)
    if data is not None:
        path.write_bytes(data)
    return BadModel(path, reason)


# --------------------------------------------------------------------------- unsafe external data


def _tiny_external(location: str, offset: int | str | None = 0, length: int | str | None = 48) -> onnx.ModelProto:
    model = matmul_relu_model()
    make_external(model.graph.initializer[0], location, offset, length)
    return model


def _weight_from_constant(location: str, *, in_function: bool) -> onnx.ModelProto:
    """The tiny model whose W comes from a Constant node (in the main graph or a model-local function) with external data."""
    value = numpy_helper.from_array(TINY_WEIGHT, "Wc")
    make_external(value, location, 0, TINY_WEIGHT.nbytes)
    constant = helper.make_node("Constant", [], ["W"], name="const", value=value)
    model = matmul_relu_model()
    del model.graph.initializer[:]
    if in_function:
        model.functions.append(helper.make_function("local", "Weight", [], ["W"], [constant], [helper.make_opsetid("", OPSET)]))
        model.opset_import.append(helper.make_opsetid("local", 1))
        model.graph.node.insert(0, helper.make_node("Weight", [], ["W"], name="weight", domain="local"))
    else:
        model.graph.node.insert(0, constant)
    return model


def _unsafe(kind: str, model_dir: Path, outside: Path) -> tuple[onnx.ModelProto, str]:
    """Write the files for ``kind`` and return the model proto and the reason regex."""
    weight = TINY_WEIGHT.tobytes()
    (outside / "w.bin").write_bytes(weight)
    absolute = str(outside / "w.bin")
    if kind == "absolute-location":
        return _tiny_external(absolute), "absolute"
    if kind == "dotdot-location":
        return _tiny_external("../outside/w.bin"), r"'\.\.'"
    if kind == "backslash-location":
        (model_dir / "sub").mkdir()
        (model_dir / "sub" / "w.bin").write_bytes(weight)
        return _tiny_external("sub\\w.bin"), "backslash"
    if kind == "empty-location":
        return _tiny_external(""), "empty"
    if kind == "symlinked-file":
        (model_dir / "w.bin").symlink_to(outside / "w.bin")
        return _tiny_external("w.bin"), "symlink"
    if kind == "symlinked-folder":
        (model_dir / "sub").symlink_to(outside, target_is_directory=True)
        return _tiny_external("sub/w.bin"), "symlink"
    if kind == "hard-linked-file":
        os.link(outside / "w.bin", model_dir / "w.bin")
        return _tiny_external("w.bin"), "hard link"
    if kind == "missing-file":
        return _tiny_external("w.bin"), "does not exist"
    if kind == "location-is-directory":
        (model_dir / "w.bin").mkdir()
        return _tiny_external("w.bin"), "not a regular file"
    (model_dir / "w.bin").write_bytes(weight + bytes(16))  # 64 bytes: the weight, then padding
    if kind == "offset-beyond-end":
        return _tiny_external("w.bin", offset=80, length=48), "outside the 64-byte file"
    if kind == "length-beyond-end":
        return _tiny_external("w.bin", offset=32, length=48), "outside the 64-byte file"
    if kind == "length-disagrees":
        return _tiny_external("w.bin", offset=0, length=52), "disagrees"
    if kind == "negative-offset":
        return _tiny_external("w.bin", offset=-4, length=48), "negative"
    if kind == "non-integer-offset":
        return _tiny_external("w.bin", offset="1.5", length=48), "not an integer"
    if kind == "if-subgraph-initializer-dotdot":
        model = matmul_relu_model()
        inner = numpy_helper.from_array(TINY_WEIGHT, "Wt")
        make_external(inner, "../outside/w.bin", 0, 48)
        then_branch = helper.make_graph(
            [helper.make_node("MatMul", ["x", "Wt"], ["t"])], "then", [],
            [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 3])], [inner],
        )
        else_branch = helper.make_graph(
            [helper.make_node("Identity", ["h"], ["e"])], "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 3])]
        )
        model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
        model.graph.node.append(helper.make_node("If", ["cond"], ["z"], name="if", then_branch=then_branch, else_branch=else_branch))
        model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3]))
        return model, r"subgraph.*'\.\.'"
    if kind == "constant-attribute-absolute":
        return _weight_from_constant(absolute, in_function=False), "attribute 'value'.*absolute"
    if kind == "sparse-initializer-dotdot":
        model = matmul_relu_model()
        del model.graph.initializer[:]
        values = numpy_helper.from_array(TINY_WEIGHT.reshape(-1), "W")
        make_external(values, "../outside/w.bin", 0, 48)
        indices = numpy_helper.from_array(np.arange(12, dtype=np.int64), "W_indices")
        model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4, 3]))
        return model, r"sparse initializer.*'\.\.'"
    if kind == "function-attribute-absolute":
        return _weight_from_constant(absolute, in_function=True), "function 'Weight'.*absolute"
    raise AssertionError(f"unknown case {kind}")


UNSAFE_KINDS = (
    "absolute-location",
    "dotdot-location",
    "backslash-location",
    "empty-location",
    "symlinked-file",
    "symlinked-folder",
    "hard-linked-file",
    "missing-file",
    "location-is-directory",
    "offset-beyond-end",
    "length-beyond-end",
    "length-disagrees",
    "negative-offset",
    "non-integer-offset",
    "if-subgraph-initializer-dotdot",
    "constant-attribute-absolute",
    "sparse-initializer-dotdot",
    "function-attribute-absolute",
)


@pytest.fixture(params=UNSAFE_KINDS)
def unsafe_external_model(request: pytest.FixtureRequest, tmp_path: Path) -> BadModel:
    """``in/model/m.onnx`` with one external-data reference that breaks the rules; files it names really exist."""
    model_dir = tmp_path / "in" / "model"
    outside = tmp_path / "in" / "outside"
    model_dir.mkdir(parents=True)
    outside.mkdir()
    model, reason = _unsafe(request.param, model_dir, outside)
    path = model_dir / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return BadModel(path, reason)


# --------------------------------------------------------------------------- valid external data

@pytest.fixture
def external_weight_model() -> Callable[[Path, str, str], Path]:
    """Factory ``(folder, where, data_name) -> folder/m.onnx``: the tiny model, W stored in ``folder/data_name``.

    ``where`` the external tensor sits: ``initializer``, ``constant`` (a Constant node's value) or
    ``function`` (a Constant node inside a model-local function).
    """

    def write(folder: Path, where: str = "initializer", data_name: str = "w.bin") -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / data_name).write_bytes(TINY_WEIGHT.tobytes())
        if where == "initializer":
            model = _tiny_external(data_name)
        else:
            model = _weight_from_constant(data_name, in_function=where == "function")
        path = folder / "m.onnx"
        path.write_bytes(model.SerializeToString())
        return path

    return write
