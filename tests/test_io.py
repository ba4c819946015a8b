"""Tests for onnxpq.io: safe loading, atomic and deterministic saving, staging, sizes on disk.

Models are built in the test (conftest.py and below); external data files are
written next to them. Numerical round trips are judged in onnxruntime.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq import io
from onnxpq.errors import ModelLoadError, OutputError, UnsafeModelError

OPSET = 21
TINY_WEIGHT = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5.0) / 4.0
#: A weight big enough (8 KiB) that save_model puts it in the external data file.
BIG_WEIGHT = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
#: The external data file save_model writes for ``o.onnx``: named by a prefix of its sha256.
_DATA_NAME = re.compile(r"o\.onnx\.[0-9a-f]{16}\.data")


def matmul_relu_model(weight: np.ndarray = TINY_WEIGHT) -> onnx.ModelProto:
    """``y = Relu(x @ W)``, ``x: float[N, K]``, initializer ``W: float[K, M]``.

    The same graph as conftest.py builds; conftest is not imported, its module name is not unique in tests/.
    """
    k, m = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"), helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


def make_external(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    """Turn ``tensor`` into an external-data reference (its own bytes are dropped)."""
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        tensor.external_data.add(key=key, value=str(value))


def _write_external_model(folder: Path, data_name: str = "weights.bin", weight: np.ndarray = BIG_WEIGHT) -> Path:
    """``folder/m.onnx`` = Relu(x @ W) with W stored in ``folder/data_name``."""
    folder.mkdir(parents=True, exist_ok=True)
    model = matmul_relu_model(weight)
    make_external(model.graph.initializer[0], data_name, 0, weight.nbytes)
    (folder / data_name).write_bytes(weight.tobytes())
    path = folder / "m.onnx"
    onnx.save(model, path)
    return path


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under root: a symlink's target, 'dir', or a file's sha256."""
    entries: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                entries[key] = f"symlink -> {os.readlink(path)}"
            elif path.is_dir():
                entries[key] = "dir"
            else:
                entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _x(k: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((5, k)).astype(np.float32)


@pytest.fixture
def external_model_path(tmp_path: Path) -> Path:
    return _write_external_model(tmp_path / "in")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# --------------------------------------------------------------------------- load: refusals


def test_load_refuses_unsafe_external_data(unsafe_external_model: Any) -> None:
    before = _snapshot(unsafe_external_model.path.parent.parent)
    with pytest.raises(UnsafeModelError, match=unsafe_external_model.reason):
        io.load_model(unsafe_external_model.path)
    assert _snapshot(unsafe_external_model.path.parent.parent) == before


def test_load_refuses_malformed_model_with_model_load_error(malformed_model: Any) -> None:
    with pytest.raises(ModelLoadError, match=malformed_model.reason) as info:
        io.load_model(malformed_model.path)
    assert not isinstance(info.value, UnsafeModelError)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- load: valid models


def test_external_initializer_loads_lazily(external_model_path: Path) -> None:
    model = io.load_model(external_model_path)
    tensor = model.graph.initializers["W"].const_value
    assert isinstance(tensor, ir.ExternalTensor)
    assert Path(tensor.path) == external_model_path.parent / "weights.bin"
    np.testing.assert_array_equal(tensor.numpy(), BIG_WEIGHT)


def test_initializer_listed_as_graph_input_loads(tmp_path: Path) -> None:
    proto = matmul_relu_model()
    proto.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3]))
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    model = io.load_model(path)
    assert "W" in model.graph.initializers
    assert [value.name for value in model.graph.inputs] == ["x", "W"]


def test_external_tensor_inside_a_function_is_read_from_the_model_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external_weight_model: Callable[..., Path]
) -> None:
    path = external_weight_model(tmp_path / "in", "function", "w.bin")
    decoy = tmp_path / "cwd"
    decoy.mkdir()
    (decoy / "w.bin").write_bytes(np.full(12, 666.0, np.float32).tobytes())
    monkeypatch.chdir(decoy)
    model = io.load_model(path)
    function = next(iter(model.functions.values()))
    tensor = next(iter(function)).attributes["value"].value
    assert isinstance(tensor, ir.ExternalTensor)
    np.testing.assert_array_equal(tensor.numpy(), TINY_WEIGHT)


# --------------------------------------------------------------------------- save


def test_external_model_round_trips_with_external_data(external_model_path: Path, out_dir: Path) -> None:
    model = io.load_model(external_model_path)
    written = io.save_model(model, out_dir / "o.onnx")
    assert written == (out_dir / "o.onnx").resolve()
    names = sorted(os.listdir(out_dir))
    assert names[0] == "o.onnx" and len(names) == 2 and _DATA_NAME.fullmatch(names[1])
    saved = onnx.load(str(out_dir / "o.onnx"), load_external_data=False)
    locations = {entry.value for entry in saved.graph.initializer[0].external_data if entry.key == "location"}
    assert locations == {names[1]}
    x = _x(64)
    np.testing.assert_array_equal(_run(out_dir / "o.onnx", x), _run(external_model_path, x))


def test_small_inline_model_saves_without_data_file(tiny_model_path: Path, out_dir: Path) -> None:
    io.save_model(io.load_model(tiny_model_path), out_dir / "o.onnx")
    assert os.listdir(out_dir) == ["o.onnx"]
    x = _x(4)
    np.testing.assert_array_equal(_run(out_dir / "o.onnx", x), _run(tiny_model_path, x))


def test_save_refuses_the_input_path(tiny_model_path: Path) -> None:
    before = _snapshot(tiny_model_path.parent)
    model = io.load_model(tiny_model_path)
    with pytest.raises(OutputError, match="refusing to overwrite"):
        io.save_model(model, tiny_model_path, protect=(tiny_model_path,))
    assert _snapshot(tiny_model_path.parent) == before


@pytest.mark.parametrize(
    ("data_name", "output_name"),
    [("weights.bin", "weights.bin"), ("o.onnx.data", "o.onnx")],
    ids=["output-is-the-data-file", "output-data-file-is-the-input-data"],
)
def test_save_refuses_the_inputs_external_data_file(tmp_path: Path, data_name: str, output_name: str) -> None:
    path = _write_external_model(tmp_path / "in", data_name)
    before = _snapshot(path.parent)
    model = io.load_model(path)
    with pytest.raises(OutputError, match="refusing to overwrite"):
        io.save_model(model, path.parent / output_name)
    assert _snapshot(path.parent) == before


def test_save_to_missing_folder_raises_output_error(tiny_model_path: Path, tmp_path: Path) -> None:
    model = io.load_model(tiny_model_path)
    with pytest.raises(OutputError, match="does not exist"):
        io.save_model(model, tmp_path / "nowhere" / "o.onnx")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_two_saves_are_byte_identical(tmp_path: Path, tiny_model_path: Path, external: bool) -> None:
    source = _write_external_model(tmp_path / "ext") if external else tiny_model_path
    model = io.load_model(source)
    digests = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        io.save_model(model, folder / "o.onnx")
        digests.append(_snapshot(folder))
        time.sleep(0.01)  # a timestamp in the output would now differ
    assert digests[0] == digests[1]
    assert len(digests[0]) == (2 if external else 1) and "o.onnx" in digests[0]
    assert all(name == "o.onnx" or _DATA_NAME.fullmatch(name) for name in digests[0])


def test_staged_output_is_invisible_until_commit(external_model_path: Path, out_dir: Path) -> None:
    dest = out_dir / "o.onnx"
    staged = io.stage_model(io.load_model(external_model_path), dest)
    assert staged.path.is_file()
    assert not dest.exists() and not any(_DATA_NAME.fullmatch(p.name) for p in out_dir.iterdir())
    assert [p.name.startswith(".onnxpq-tmp-") for p in out_dir.iterdir()] == [True]
    staged.commit()
    names = sorted(os.listdir(out_dir))
    assert names[0] == "o.onnx" and len(names) == 2 and _DATA_NAME.fullmatch(names[1])


def test_discarded_stage_leaves_the_folder_empty(external_model_path: Path, out_dir: Path) -> None:
    staged = io.stage_model(io.load_model(external_model_path), out_dir / "o.onnx")
    staged.discard()
    assert os.listdir(out_dir) == []


def test_stage_left_uncommitted_in_a_with_block_leaves_the_folder_empty(external_model_path: Path, out_dir: Path) -> None:
    with io.stage_model(io.load_model(external_model_path), out_dir / "o.onnx") as staged:
        assert staged.path.is_file()
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("first_external", [True, False], ids=["external-then-inline", "inline-then-external"])
def test_old_output_is_replaced_whole(tmp_path: Path, tiny_model_path: Path, first_external: bool) -> None:
    external = io.load_model(_write_external_model(tmp_path / "ext"))
    inline = io.load_model(tiny_model_path)
    first, second = (external, inline) if first_external else (inline, external)
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    out.mkdir()
    fresh.mkdir()
    io.save_model(first, out / "o.onnx")
    io.save_model(second, out / "o.onnx")
    io.save_model(second, fresh / "o.onnx")
    assert _snapshot(out) == _snapshot(fresh)


def test_model_size_bytes_counts_the_external_data_file(external_model_path: Path) -> None:
    expected = external_model_path.stat().st_size + BIG_WEIGHT.nbytes
    assert io.model_size_bytes(external_model_path) == expected


def test_model_size_bytes_counts_a_shared_data_file_once(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    model = matmul_relu_model(BIG_WEIGHT)
    bias = numpy_helper.from_array(np.ones(32, np.float32), "B")
    model.graph.initializer.append(bias)
    make_external(model.graph.initializer[0], "w.bin", 0, BIG_WEIGHT.nbytes)
    make_external(model.graph.initializer[1], "w.bin", BIG_WEIGHT.nbytes, 128)
    (folder / "w.bin").write_bytes(BIG_WEIGHT.tobytes() + np.ones(32, np.float32).tobytes())
    onnx.save(model, folder / "m.onnx")
    assert io.model_size_bytes(folder / "m.onnx") == (folder / "m.onnx").stat().st_size + BIG_WEIGHT.nbytes + 128


@pytest.mark.parametrize("where", ["constant", "function"])
def test_external_attribute_tensor_round_trips(
    tmp_path: Path, out_dir: Path, external_weight_model: Callable[..., Path], where: str
) -> None:
    path = external_weight_model(tmp_path / "in", where, "w.bin")
    io.save_model(io.load_model(path), out_dir / "o.onnx")
    assert os.listdir(out_dir) == ["o.onnx"]
    x = _x(4)
    np.testing.assert_array_equal(_run(out_dir / "o.onnx", x), _run(path, x))


@pytest.mark.parametrize("where", ["constant", "function"])
def test_save_refuses_a_data_file_the_inputs_attribute_tensors_use(
    tmp_path: Path, external_weight_model: Callable[..., Path], where: str
) -> None:
    path = external_weight_model(tmp_path / "in", where, "o.onnx.data")
    before = _snapshot(path.parent)
    model = io.load_model(path)
    with pytest.raises(OutputError, match="refusing to overwrite"):
        io.save_model(model, path.parent / "o.onnx", protect=(path,))
    assert _snapshot(path.parent) == before


# --------------------------------------------------------------------------- over 2 GiB


@pytest.mark.slow
def test_model_over_2_gib_is_written_with_external_data_and_reloads(tmp_path: Path) -> None:
    """Four 600 MiB float32 weights (2.3 GiB in all), each made on demand, so none is held longer than its write."""
    side, count = 12_544, 4
    nbytes = side * side * 4
    assert count * nbytes > max(io.INLINE_LIMIT_BYTES, 2**31)
    x = ir.Value(name="x", shape=ir.Shape([1, side]), type=ir.TensorType(ir.DataType.FLOAT))
    weights, nodes, current = [], [], x
    for index in range(count):
        fill = float(index + 1)
        tensor = ir.LazyTensor(
            lambda fill=fill: ir.tensor(np.full((side, side), fill, np.float32)),
            dtype=ir.DataType.FLOAT,
            shape=ir.Shape([side, side]),
            name=f"W{index}",
        )
        weight = ir.Value(name=f"W{index}", shape=tensor.shape, type=ir.TensorType(ir.DataType.FLOAT), const_value=tensor)
        node = ir.node("MatMul", [current, weight], name=f"matmul{index}")
        node.outputs[0].name = f"h{index}"
        weights.append(weight)
        nodes.append(node)
        current = node.outputs[0]
    current.shape, current.type = ir.Shape([1, side]), ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], [current], nodes=nodes, initializers=weights, opset_imports={"": OPSET}, name="big")
    model = ir.Model(graph, ir_version=10)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        written = io.save_model(model, tmp_path / "big.onnx")
        peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
        assert peak_growth < 2 * nbytes, f"saving held {peak_growth / 2**30:.2f} GiB: tensors were not streamed"
        data_files = [p for p in tmp_path.iterdir() if p.name.startswith("big.onnx.") and p.name.endswith(".data")]
        assert sorted(os.listdir(tmp_path)) == ["big.onnx", data_files[0].name]
        assert data_files[0].stat().st_size == count * nbytes
        assert written.stat().st_size < 1_000_000
        onnx.checker.check_model(str(written))
        loaded = io.load_model(written)
        tensors = [value.const_value for value in loaded.graph.initializers.values()]
        assert [t.name for t in tensors] == [f"W{i}" for i in range(count)]
        assert all(isinstance(t, ir.ExternalTensor) and t.nbytes == nbytes for t in tensors)
        assert [t.offset for t in tensors] == [i * nbytes for i in range(count)]
        for index, tensor in enumerate(tensors):  # memory-mapped: reads a page, not 600 MiB
            np.testing.assert_array_equal(tensor.numpy()[-2:, -2:], np.full((2, 2), index + 1, np.float32))
    finally:
        for data_file in tmp_path.glob("big.onnx*.data"):
            data_file.unlink(missing_ok=True)  # 2.3 GiB: do not keep it in pytest's kept tmp dirs


# --------------------------------------------------------------------------- tensor store, mapping staged tensors


def _in_memory_model(weight: np.ndarray = BIG_WEIGHT) -> ir.Model:
    """Relu(x @ W) with W an in-memory tensor (as a pass leaves a new weight)."""
    return ir.serde.deserialize_model(matmul_relu_model(weight))


@pytest.mark.parametrize(
    ("array", "dtype"),
    [(BIG_WEIGHT, None), (np.arange(-8, 8, dtype=np.int8).repeat(64).reshape(32, 32), ir.DataType.INT4)],
    ids=["float32", "int4-packed"],
)
def test_tensor_store_gives_back_an_external_tensor_with_the_same_values(tmp_path: Path, array: np.ndarray, dtype: Any) -> None:
    tensor = ir.Tensor(array, dtype=dtype, name="t") if dtype is not None else ir.tensor(array, name="t")
    with io.TensorStore(tmp_path, min_bytes=1) as store:
        first = store.put(ir.tensor(np.ones(3, np.uint8), name="odd"))  # the next one starts at an aligned offset
        stored = store.put(tensor)
        assert isinstance(stored, ir.ExternalTensor) and stored.offset % io.TensorStore.ALIGNMENT == 0
        assert (stored.name, stored.dtype, stored.shape, stored.nbytes) == ("t", tensor.dtype, tensor.shape, tensor.nbytes)
        np.testing.assert_array_equal(stored.numpy(), tensor.numpy())
        np.testing.assert_array_equal(first.numpy(), np.ones(3, np.uint8))
        assert store.bytes_stored == 3 + tensor.nbytes


def test_tensor_store_keeps_small_tensors_in_memory_and_removes_its_folder_on_close(tmp_path: Path) -> None:
    small = ir.tensor(np.ones(4, np.float32), name="small")
    store = io.TensorStore(tmp_path, min_bytes=1024)
    assert store.put(small) is small
    big = store.put(ir.tensor(BIG_WEIGHT, name="big"))
    assert [p.name.startswith(io.STAGING_PREFIX) for p in tmp_path.iterdir()] == [True]
    store.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="invalidated"):
        big.numpy()


def test_staged_model_maps_in_memory_tensors_to_the_staged_file_and_they_follow_the_commit(out_dir: Path) -> None:
    model = _in_memory_model()
    staged = io.stage_model(model, out_dir / "o.onnx", external_data=True)
    assert staged.map_tensors(model) == BIG_WEIGHT.nbytes
    tensor = model.graph.initializers["W"].const_value
    assert isinstance(tensor, ir.ExternalTensor) and tensor.location == staged.data_name
    np.testing.assert_array_equal(tensor.numpy(), BIG_WEIGHT)
    tensor.release()
    staged.commit()
    assert Path(tensor.path) == out_dir.resolve() / staged.data_name
    np.testing.assert_array_equal(tensor.numpy(), BIG_WEIGHT)  # mapped again, from the committed file
    x = _x(64)
    np.testing.assert_allclose(_run(out_dir / "o.onnx", x), np.maximum(x @ BIG_WEIGHT, 0), rtol=1e-5, atol=1e-5)


def test_staged_model_mapped_tensors_are_invalid_after_discard(out_dir: Path) -> None:
    model = _in_memory_model()
    staged = io.stage_model(model, out_dir / "o.onnx", external_data=True)
    staged.map_tensors(model)
    staged.discard()
    assert os.listdir(out_dir) == []
    with pytest.raises(ValueError, match="invalidated"):
        model.graph.initializers["W"].const_value.numpy()


def test_staged_model_without_a_data_file_maps_nothing(tiny_model_path: Path, out_dir: Path) -> None:
    model = io.load_model(tiny_model_path)
    with io.stage_model(model, out_dir / "o.onnx") as staged:
        assert staged.data_name is None and staged.map_tensors(model) == 0
    assert not isinstance(model.graph.initializers["W"].const_value, ir.ExternalTensor)


# --------------------------------------------------------------------------- ai.onnx.ml-only models


def _ml_only_model() -> onnx.ModelProto:
    """``y = Binarizer(x)`` in ai.onnx.ml, the only domain the model imports (as scikit-learn converters write)."""
    graph = helper.make_graph(
        [helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5, name="binarize")],
        "ml_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    return model


def test_a_model_importing_only_ai_onnx_ml_loads_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "ml.onnx"
    onnx.save(_ml_only_model(), path)
    model = io.load_model(path)
    assert dict(model.opset_imports) == {"ai.onnx.ml": 1}
    io.save_model(model, tmp_path / "o.onnx")
    x = np.array([[0.2, 0.5, 0.9]], np.float32)
    np.testing.assert_array_equal(_run(tmp_path / "o.onnx", x), _run(path, x))


def test_a_default_domain_node_in_an_ai_onnx_ml_only_model_is_refused(tmp_path: Path) -> None:
    proto = _ml_only_model()
    proto.graph.node.append(helper.make_node("Relu", ["y"], ["z"], name="relu"))
    proto.graph.output[0].name = "z"
    path = tmp_path / "ml.onnx"
    onnx.save(proto, path)
    with pytest.raises(ModelLoadError, match="uses domain '', which the model does not import"):
        io.load_model(path)
