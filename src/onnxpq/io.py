"""Safe model loading and atomic saving.

Loading parses the protobuf *without* its external data, checks every
external-data reference against the rules below, then deserialises into
onnx-ir, whose external tensors are memory-mapped on first use (never read all
at once). Saving writes into a temporary folder beside the destination, fsyncs,
checks the written model with the onnx checker *by path*, and renames the
external data file first and the ``.onnx`` last.

Crash safety of a save (a ``kill -9``, a full disk, a power cut after the
fsyncs): the destination shows the old complete output or the new complete
output, never a mix. The external data file is named after its content,
``<name>.<16 hex of sha256>.data``, so the old ``.onnx`` can never pair with
new data: the new data file appears beside the old one under a new name, the
``.onnx`` rename switches atomically, then the old data file is removed. A
save killed between those steps leaves the other output's data file (never
referenced) and a hidden ``.onnxpq-tmp-<pid>-*`` staging folder; the next save
to the same destination removes both (staging folders only when the process
that made them is gone).

External-data rules (an offending reference raises :class:`UnsafeModelError`),
applied to initializers, sparse initializers, attribute tensors, subgraphs
(If/Loop/Scan bodies at any depth) and functions alike:

* ``location`` is a plain relative path: not absolute, no ``..`` component,
  no backslash, no NUL, no drive letter;
* it resolves to a regular file inside the model's folder, with no symlink on
  the way and exactly one hard link (a hard link can alias any file on the disk);
* ``offset`` and ``length`` are non-negative integers, ``offset + length`` is
  within the file, and ``length`` equals the byte size the tensor's dims and
  dtype imply.

Large models are never held in memory whole: besides the memory-mapped input,
:class:`TensorStore` keeps the tensors passes make in a scratch data file
beside the output, and :meth:`StagedModel.map_tensors` turns the in-memory
tensors of a model just staged into memory maps of the staged data file.

Uses onnx-ir for the in-memory graph (use-def links, lazy external tensors) and
``onnx`` only at the boundary (protobuf parsing, checker).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from onnxpq.errors import ModelLoadError, NonFiniteWeightsError, OnnxpqError, OutputError, UnsafeModelError

__all__ = [
    "ExternalReference",
    "load_model",
    "save_model",
    "external_files",
    "model_size_bytes",
    "max_supported_opset",
    "INLINE_LIMIT_BYTES",
    "write_text_atomic",
    "stage_model",
    "StagedModel",
    "TensorStore",
    "STAGING_PREFIX",
    "remove_stale_staging",
    "NONFINITE_POLICIES",
    "nonfinite_tensors",
    "check_finite_weights",
]

logger = logging.getLogger(__name__)

#: Tensors above this total size are written to external data: a single
#: protobuf cannot exceed 2 GiB, and we keep a margin for the graph itself.
INLINE_LIMIT_BYTES = 1_800_000_000

#: Models whose tensors exceed this are written with external data even when they fit inline: a memory-mapped
#: data file lets load_model and validation (segment by segment, see onnxpq.core.session) read them piecewise,
#: where an inline protobuf is read whole (a 3 GiB model quantized to int8 would be 0.75 GiB in memory at once).
EXTERNAL_ABOVE_BYTES = 256 * 1024 * 1024

#: Initializers at or above this size go to the external data file when one is written.
EXTERNAL_THRESHOLD_BYTES = 1024


@dataclass(frozen=True)
class ExternalReference:
    """One tensor's external-data reference, as found in the protobuf."""

    tensor: str
    location: str
    offset: int
    length: int | None
    where: str


def _tensor_byte_size(tensor: onnx.TensorProto) -> int | None:
    """Bytes a tensor's dims and dtype imply, or None for variable-size types (strings)."""
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    try:
        dtype = ir.DataType(tensor.data_type)
    except ValueError:
        return None
    return (count * dtype.bitwidth + 7) // 8


def _iter_tensors(proto: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """Yield every TensorProto of the model with a description of where it sits."""

    def from_graph(graph: onnx.GraphProto, where: str) -> Iterator[tuple[onnx.TensorProto, str]]:
        for tensor in graph.initializer:
            yield tensor, f"{where} initializer"
        for sparse in graph.sparse_initializer:
            yield sparse.values, f"{where} sparse initializer"
            yield sparse.indices, f"{where} sparse initializer indices"
        for node in graph.node:
            yield from from_nodes([node], f"{where} node '{node.name}'")

    def from_nodes(nodes: list[onnx.NodeProto], where: str) -> Iterator[tuple[onnx.TensorProto, str]]:
        for node in nodes:
            for attr in node.attribute:
                at = f"{where} attribute '{attr.name}'"
                if attr.HasField("t"):
                    yield attr.t, at
                for tensor in attr.tensors:
                    yield tensor, at
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values, at
                    yield attr.sparse_tensor.indices, at
                for sparse in attr.sparse_tensors:
                    yield sparse.values, at
                    yield sparse.indices, at
                if attr.HasField("g"):
                    yield from from_graph(attr.g, f"{at} subgraph")
                for sub in attr.graphs:
                    yield from from_graph(sub, f"{at} subgraph")

    yield from from_graph(proto.graph, "graph")
    for function in proto.functions:
        yield from from_nodes(list(function.node), f"function '{function.name}'")


#: The keys ONNX defines for an external-data reference; any other is refused (a typo or a corrupted file).
_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})


def _external_reference(tensor: onnx.TensorProto, where: str) -> ExternalReference:
    name = tensor.name or "<unnamed>"
    keys = [entry.key for entry in tensor.external_data]
    unknown = sorted(set(keys) - _EXTERNAL_KEYS)
    if unknown:
        raise UnsafeModelError(f"tensor '{name}' ({where}): unknown external data key(s) {unknown}")
    if len(keys) != len(set(keys)):
        raise UnsafeModelError(f"tensor '{name}' ({where}): an external data key is given twice")
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else None
    except ValueError as exc:
        raise UnsafeModelError(
            f"tensor '{name}' ({where}): external data offset/length is not an integer"
        ) from exc
    return ExternalReference(name, location, offset, length, where)


def _check_location(ref: ExternalReference, base_dir: Path) -> Path:
    """Resolve a location to a plain file inside base_dir, or raise UnsafeModelError."""
    what = f"tensor '{ref.tensor}' ({ref.where}): external data location '{ref.location}'"
    loc = ref.location
    if not loc:
        raise UnsafeModelError(f"{what} is empty")
    if "\\" in loc or "\x00" in loc:
        raise UnsafeModelError(f"{what} contains a backslash or NUL; use a plain relative file name")
    if os.path.isabs(loc) or loc.startswith("/") or (len(loc) > 1 and loc[1] == ":"):
        raise UnsafeModelError(f"{what} is absolute; external data must live in the model's folder")
    parts = Path(loc).parts
    if any(part == ".." for part in parts):
        raise UnsafeModelError(f"{what} leaves the model's folder ('..')")
    path = base_dir
    for part in parts:
        if part == ".":
            continue
        path = path / part
        try:
            info = path.lstat()
        except FileNotFoundError as exc:
            raise UnsafeModelError(f"{what} does not exist") from exc
        except OSError as exc:
            raise UnsafeModelError(f"{what} cannot be read: {exc.strerror}") from exc
        if stat.S_ISLNK(info.st_mode):
            raise UnsafeModelError(f"{what} goes through a symlink; copy the data file instead")
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeModelError(f"{what} is not a regular file")
    if info.st_nlink != 1:
        raise UnsafeModelError(
            f"{what} has {info.st_nlink} hard links; a hard link can alias any file, copy the data file instead"
        )
    real_base = base_dir.resolve()
    if real_base not in path.resolve().parents:
        raise UnsafeModelError(f"{what} resolves outside the model's folder")
    return path


def _check_external_data(proto: onnx.ModelProto, base_dir: Path) -> list[ExternalReference]:
    refs: list[ExternalReference] = []
    sizes: dict[Path, int] = {}
    for tensor, where in _iter_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        ref = _external_reference(tensor, where)
        path = _check_location(ref, base_dir)
        size = sizes.setdefault(path, path.stat().st_size)
        what = f"tensor '{ref.tensor}' ({where}) in '{ref.location}'"
        if ref.offset < 0 or (ref.length is not None and ref.length < 0):
            raise UnsafeModelError(f"{what}: negative offset or length")
        expected = _tensor_byte_size(tensor)
        if expected is None:
            raise UnsafeModelError(f"{what}: tensors of this type cannot be stored externally")
        length = ref.length if ref.length is not None else size - ref.offset
        if ref.offset + length > size:
            raise UnsafeModelError(
                f"{what}: bytes {ref.offset}..{ref.offset + length} fall outside the {size}-byte file"
            )
        if length != expected:
            raise UnsafeModelError(
                f"{what}: length {length} disagrees with the {expected} bytes its shape and type need"
            )
        refs.append(ref)
    return refs


#: TensorProto field holding the values of each type when ``raw_data`` is not used (counts checked for strings only).
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _check_inline_tensors(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse tensors whose type is unknown, dims negative, or stored bytes disagree with dims and type.

    onnx's checker misses some of these (``raw_data`` longer than the shape
    needs) or words them for the onnx developer; onnx-ir and onnxruntime then
    fail further in with a message naming neither the tensor nor the fix.
    External tensors are checked by :func:`_check_external_data`.
    """
    for tensor, where in _iter_tensors(proto):
        name = tensor.name or "<unnamed>"
        what = f"{path}: tensor '{name}' ({where})"
        try:
            dtype = ir.DataType(tensor.data_type)
        except ValueError:
            raise ModelLoadError(f"{what} has unknown data type {tensor.data_type}") from None
        if dtype == ir.DataType.UNDEFINED:
            raise ModelLoadError(f"{what} has data type UNDEFINED; set its element type")
        if any(dim < 0 for dim in tensor.dims):
            raise ModelLoadError(f"{what} has a negative dimension {list(tensor.dims)}")
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        count = 1
        for dim in tensor.dims:
            count *= dim
        if dtype == ir.DataType.STRING:
            if len(tensor.string_data) != count:
                raise ModelLoadError(f"{what} holds {len(tensor.string_data)} strings but its shape {list(tensor.dims)} needs {count}")
            continue
        expected = (count * dtype.bitwidth + 7) // 8
        if tensor.HasField("raw_data"):
            if len(tensor.raw_data) != expected:
                raise ModelLoadError(
                    f"{what} holds {len(tensor.raw_data)} bytes of raw_data but its shape {list(tensor.dims)} "
                    f"and type {dtype.name} need {expected}"
                )
        elif count > 0 and not any(len(getattr(tensor, field)) for field in _TYPED_FIELDS):
            raise ModelLoadError(f"{what} holds no data but its shape {list(tensor.dims)} needs {count} values")


@functools.lru_cache(maxsize=1)
def max_supported_opset() -> int:
    """Highest default-domain opset both onnx and onnxruntime (this install) support.

    onnxruntime does not expose it, so it is probed once with a one-node model.
    """
    import onnxruntime as ort

    highest = onnx.defs.onnx_opset_version()

    def runs(version: int) -> bool:
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "probe",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", version)])
        model.ir_version = min(onnx.IR_VERSION, 10)
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - any failure means "not supported"
            return False
        return True

    low, high = 7, highest
    while low < high:
        mid = (low + high + 1) // 2
        if runs(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _parse(path: Path) -> onnx.ModelProto:
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: no such file") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ModelLoadError(f"{path}: not a regular file")
    if info.st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty")
    try:
        data = path.read_bytes()
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{path}: not an ONNX model (protobuf parse failed: {exc})") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror})") from exc
    return proto


#: The ONNX-ML operator domain. A model importing it alone (traditional ML: trees, scalers) loads; passes find none
#: of their default-domain ops in it and leave it as it is.
_ML_DOMAIN = "ai.onnx.ml"


def _check_header(proto: onnx.ModelProto, path: Path) -> None:
    if proto.ir_version <= 0:
        raise ModelLoadError(f"{path}: ir_version is {proto.ir_version}; not an ONNX model or a truncated one")
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelLoadError(
            f"{path}: ir_version {proto.ir_version} is newer than this onnx supports ({onnx.IR_VERSION}); "
            "upgrade onnx or re-export with an older ir_version"
        )
    if not proto.HasField("graph") or not proto.graph.output:
        raise ModelLoadError(f"{path}: the model has no graph or no graph outputs")
    opsets = {entry.domain or "": entry.version for entry in proto.opset_import}
    if "" not in opsets and "ai.onnx" not in opsets and _ML_DOMAIN not in opsets:
        raise ModelLoadError(f"{path}: the model imports no default-domain opset")
    if "" in opsets or "ai.onnx" in opsets:  # else an ai.onnx.ml-only model (scikit-learn converters): no default op
        default = opsets.get("", opsets.get("ai.onnx", 0))
        if default < 1:
            raise ModelLoadError(f"{path}: default-domain opset version {default} is invalid")
        supported = max_supported_opset()
        if default > supported:
            raise ModelLoadError(
                f"{path}: opset {default} is newer than onnx/onnxruntime here support ({supported}); "
                "convert the model to an older opset"
            )
    elif opsets[_ML_DOMAIN] < 1:
        raise ModelLoadError(f"{path}: {_ML_DOMAIN} opset version {opsets[_ML_DOMAIN]} is invalid")
    known = set(opsets) | {"ai.onnx"}
    local_functions = {(f.domain, f.name) for f in proto.functions}

    def check_nodes(nodes: list[onnx.NodeProto]) -> None:
        for node in nodes:
            domain = node.domain or ""
            if domain not in known and (domain, node.op_type) not in local_functions:
                raise ModelLoadError(
                    f"{path}: node '{node.name}' ({node.op_type}) uses domain '{domain}', "
                    "which the model does not import"
                )

    _check_text_fields(proto, path)
    check_nodes(list(proto.graph.node))
    _check_unique_names(proto.graph, path, "main graph")
    _check_inline_tensors(proto, path)


def _check_text_fields(message: Message, path: Path, where: str = "model") -> None:
    """Every string field (names, op types, domains, attribute strings' keys) must be valid UTF-8.

    proto2 does not validate strings on parse: the Python runtime hands back
    ``bytes`` for an invalid one, and onnx-ir fails far later, at save time.
    """
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            for text in value if _is_repeated(field) else [value]:
                if isinstance(text, bytes):
                    raise ModelLoadError(f"{path}: {where}.{field.name} is not valid UTF-8 ({text[:40]!r})")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for sub in value if _is_repeated(field) else [value]:
                name = getattr(sub, "name", "") if field.name in ("node", "graph", "initializer", "attribute") else ""
                label = f"{where}.{field.name}" + (f"['{name}']" if isinstance(name, str) and name else "")
                _check_text_fields(sub, path, label)


def _is_repeated(field: FieldDescriptor) -> bool:
    if hasattr(field, "is_repeated"):  # protobuf >= 5.28 (upb); older runtimes have ``label``
        return bool(field.is_repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED  # pragma: no cover - old protobuf


def _check_unique_names(graph: onnx.GraphProto, path: Path, where: str) -> None:
    """Duplicate names make deserialisation ambiguous: name them before onnx-ir trips on them."""
    seen: dict[str, str] = {}

    def claim(name: str, what: str) -> None:
        if not name:
            return
        if name in seen and not (what == "an initializer" and seen[name] == "a graph input"):
            raise ModelLoadError(f"{path}: {where}: '{name}' is defined twice ({seen[name]} and {what})")
        seen[name] = what

    for value in graph.input:
        claim(value.name, "a graph input")
    for tensor in graph.initializer:
        claim(tensor.name, "an initializer")
    for node in graph.node:
        for output in node.output:
            claim(output, f"node '{node.name}' ({node.op_type})")
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _check_unique_names(sub, path, f"{where} > node '{node.name}'.{attr.name}")


def _refuse_sparse_initializers(proto: onnx.ModelProto, path: Path) -> None:
    """onnx-ir does not read sparse initializers: refuse them by name rather than fail later on a 'dangling' input."""

    def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    yield from graphs(sub)

    for graph in graphs(proto.graph):
        for sparse in graph.sparse_initializer:
            raise ModelLoadError(
                f"{path}: sparse initializer '{sparse.values.name}' is not supported; store it as a dense initializer"
            )


class _DemoteToDebug(logging.Filter):
    """Re-log onnx-ir's deserialisation warnings at DEBUG: the verifier reports the same problem in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            logger.debug("onnx-ir: %s", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quiet_serde() -> Iterator[None]:
    serde_logger = logging.getLogger("onnx_ir.serde")
    demote = _DemoteToDebug()
    serde_logger.addFilter(demote)
    try:
        yield
    finally:
        serde_logger.removeFilter(demote)


def load_model(path: str | os.PathLike[str], *, check: bool = True) -> ir.Model:
    """Load a model safely into onnx-ir.

    Raises:
        ModelLoadError: unreadable, empty, not ONNX, unsupported versions,
            dangling inputs, duplicate names, cycles, or the onnx checker fails.
        UnsafeModelError: an external-data reference breaks the rules above.
    """
    from onnxpq.core.verify import StructureError, verify_structure

    path = Path(path)
    proto = _parse(path)
    _check_header(proto, path)
    base_dir = path.parent if str(path.parent) else Path(".")
    try:
        _check_external_data(proto, base_dir)
    except UnsafeModelError as exc:
        raise UnsafeModelError(f"{path}: {exc}") from exc
    _refuse_sparse_initializers(proto, path)
    try:
        with _quiet_serde():
            model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx-ir raises a variety of errors on malformed protos
        raise ModelLoadError(f"{path}: malformed model ({type(exc).__name__}: {exc})") from exc
    del proto
    ir.external_data.set_base_dir(model.graph, str(base_dir))
    for function in model.functions.values():
        for node in function.all_nodes():
            for attr in node.attributes.values():
                if isinstance(attr.value, ir.ExternalTensor):
                    attr.value.base_dir = str(base_dir)
    if check:
        try:
            verify_structure(model)
        except StructureError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        _run_checker(path)
    return model


def _run_checker(path: Path) -> None:
    """The onnx checker by path (it handles >2 GiB models and external data)."""
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: the onnx checker refused the model: {first}") from exc


#: What :func:`check_finite_weights` does with NaN/Inf weights: refuse (raise) or warn (log and go on).
NONFINITE_POLICIES = ("refuse", "warn")

#: Elements checked per step, so a multi-GiB external weight is scanned without a same-sized mask.
_FINITE_CHUNK = 1 << 22


def _constant_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Initializers of every graph, and TENSOR/TENSORS attributes in graphs, subgraphs and functions."""
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
    nodes = [*model.graph.all_nodes()]
    for function in model.functions.values():
        nodes.extend(function.all_nodes())
    for node in nodes:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.TENSOR:
                yield attr.value
            elif attr.type == ir.AttributeType.TENSORS:
                yield from attr.value


def _count_nonfinite(tensor: ir.TensorProtocol) -> int:
    if not tensor.dtype.is_floating_point() or tensor.size == 0:
        return 0
    flat = np.asarray(tensor.numpy()).reshape(-1)
    bad = 0
    for start in range(0, flat.size, _FINITE_CHUNK):
        bad += int(np.count_nonzero(~np.isfinite(flat[start : start + _FINITE_CHUNK])))
    del flat
    if isinstance(tensor, ir.ExternalTensor):
        with contextlib.suppress(BufferError):  # a view alive elsewhere keeps the map; it goes with the view
            tensor.release()  # touched pages of a memory map stay resident until unmapped: 3 GiB model, 3 GiB RSS
    return bad


def nonfinite_tensors(model: ir.Model) -> list[tuple[str, int]]:
    """``(tensor name, count)`` of every constant float tensor holding NaN or Inf values, in model order.

    Reads every float initializer and constant attribute (external tensors are
    memory-mapped and scanned in chunks).
    """
    found = []
    for tensor in _constant_tensors(model):
        count = _count_nonfinite(tensor)
        if count:
            found.append((tensor.name or "<unnamed>", count))
    return found


def check_finite_weights(model: ir.Model, policy: str = "refuse", *, source: str | os.PathLike[str] = "") -> list[tuple[str, int]]:
    """Refuse (``policy="refuse"``) or warn about (``"warn"``) NaN/Inf weights, before any pass quantizes them.

    A NaN or Inf weight makes every quantization scale and every fidelity
    figure meaningless, so by default it is an error naming the tensor.

    Returns:
        what :func:`nonfinite_tensors` found (empty when all weights are finite).

    Raises:
        NonFiniteWeightsError: ``policy`` is ``refuse`` and a weight is not finite.
        OnnxpqError: ``policy`` is not one of :data:`NONFINITE_POLICIES`.
    """
    if policy not in NONFINITE_POLICIES:
        raise OnnxpqError(f"--nonfinite-weights must be one of {', '.join(NONFINITE_POLICIES)}, got '{policy}'")
    found = nonfinite_tensors(model)
    if not found:
        return found
    name, count = found[0]
    more = f" (and {len(found) - 1} more tensor(s))" if len(found) > 1 else ""
    prefix = f"{source}: " if str(source) else ""
    if policy == "refuse":
        raise NonFiniteWeightsError(
            f"{prefix}weight '{name}' has {count} non-finite (NaN/Inf) value(s){more}; "
            "fix the model or pass --nonfinite-weights warn to go on"
        )
    for name, count in found:
        logger.warning("%sweight '%s' has %d non-finite (NaN/Inf) value(s); going on as asked (--nonfinite-weights warn)", prefix, name, count)
    return found


def external_files(model: ir.Model) -> set[Path]:
    """Real paths of every external-data file the model's tensors point to.

    Initializers of every graph, and TENSOR/TENSORS attributes (Constant
    values, ...) in the graph, its subgraphs and the model's functions.
    """
    files: set[Path] = set()
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                files.add(Path(tensor.path).resolve())
    for node, name in _external_attribute_nodes(model):
        attr = node.attributes[name]
        for tensor in attr.value if attr.type == ir.AttributeType.TENSORS else [attr.value]:
            if isinstance(tensor, ir.ExternalTensor):
                files.add(Path(tensor.path).resolve())
    return files


def model_size_bytes(path: str | os.PathLike[str]) -> int:
    """Size on disk of a model: the .onnx file plus every distinct external data file it references."""
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    total = path.stat().st_size
    seen: set[str] = set()
    for tensor, _ in _iter_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and entry.value not in seen:
                    seen.add(entry.value)
                    total += (path.parent / entry.value).stat().st_size
    return total


def _tensor_bytes(model: ir.Model) -> int:
    total = 0
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None:
                total += tensor.nbytes
    return total


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Prefix of the hidden staging folders (and report temp files); ``<prefix><pid>-<random>``.
STAGING_PREFIX = ".onnxpq-tmp-"


def _data_file_pattern(dest_name: str) -> re.Pattern[str]:
    """Names of the data files a save to ``dest_name`` writes (and the fixed name older versions wrote)."""
    return re.compile(re.escape(dest_name) + r"(\.[0-9a-f]{16})?\.data")


def _sha256_prefix(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove hidden staging folders and temp files in ``folder`` left by saves whose process is gone; return them.

    Only ``.onnxpq-tmp-<pid>-*`` entries whose process no longer runs on this
    machine are removed: a save in progress (another process) is left alone.
    """
    removed = []
    for entry in Path(folder).glob(f"{STAGING_PREFIX}*"):
        pid_text = entry.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if entry.is_symlink() or not pid_text.isdigit():
            continue
        if int(pid_text) == os.getpid() or _process_alive(int(pid_text)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
        logger.info("removed a stale staging folder %s (its save was interrupted)", entry)
    return removed


class StagedModel:
    """A model written and checked in a temporary folder beside its destination, not yet visible.

    ``path`` is the staged ``.onnx`` (it runs in onnxruntime: its data file sits
    beside it under its final name). :meth:`commit` renames the data file,
    then the ``.onnx``, into place, then removes the data file of the output
    it replaced; :meth:`discard` removes everything. Used as a context manager
    it discards unless committed.
    """

    def __init__(self, dest: Path, tmp_dir: Path, data_name: str | None, guarded: set[Path]) -> None:
        self.dest = dest
        self.tmp_dir = tmp_dir
        self.path = tmp_dir / dest.name
        self.data_name = data_name
        self._guarded = guarded
        self.committed = False
        self._mapped: list[ir.ExternalTensor] = []

    def map_tensors(self, model: ir.Model) -> int:
        """Swap ``model``'s in-memory initializers for memory maps of their bytes in the staged data file.

        ``model`` is the model just staged (or one with the same initializers):
        each main-graph initializer held in memory that the staged ``.onnx``
        stores in the data file becomes an :class:`onnx_ir.ExternalTensor` over
        those bytes, the same values, so the arrays can be freed while
        validation and reports still read the model. The tensors follow the data
        file to the destination at :meth:`commit`, and are invalidated by
        :meth:`discard`. Returns the bytes no longer held in memory.
        """
        if self.data_name is None:
            return 0
        proto = onnx.load(str(self.path), load_external_data=False)
        places = {}
        for tensor in proto.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                ref = _external_reference(tensor, "graph initializer")
                if ref.location == self.data_name:
                    places[tensor.name] = ref
        del proto
        freed = 0
        for value in model.graph.initializers.values():
            tensor, ref = value.const_value, places.get(value.name or "")
            if tensor is None or ref is None or isinstance(tensor, ir.ExternalTensor):
                continue
            if ref.length != tensor.nbytes:  # not the tensor staged under this name: leave it alone
                logger.debug("'%s': staged length %s != %d bytes in memory; kept in memory", value.name, ref.length, tensor.nbytes)
                continue
            mapped = ir.ExternalTensor(
                ref.location, offset=ref.offset, length=ref.length, dtype=tensor.dtype, shape=ir.Shape(tensor.shape),
                name=tensor.name or value.name, doc_string=tensor.doc_string,
                metadata_props=dict(tensor.metadata_props), base_dir=str(self.tmp_dir),
            )  # fmt: skip
            value.const_value = mapped
            self._mapped.append(mapped)
            freed += tensor.nbytes
        logger.debug("%d bytes of in-memory tensors now read from the staged %s", freed, self.data_name)
        return freed

    def commit(self) -> Path:
        """Move the staged files into place, the ``.onnx`` last; return the destination."""
        folder = self.dest.parent
        try:
            if self.data_name is not None:
                os.replace(self.tmp_dir / self.data_name, folder / self.data_name)
                with contextlib.suppress(OSError):
                    _fsync(folder)
            os.replace(self.path, self.dest)
            with contextlib.suppress(OSError):
                _fsync(folder)
            for tensor in self._mapped:  # their data file is now the destination's (an open map stays valid)
                tensor.base_dir = str(folder)
            self._mapped = []
        except OSError as exc:
            raise OutputError(f"{self.dest}: cannot move the output into place ({exc.strerror or exc})") from exc
        finally:
            self.discard()
        self.committed = True
        self._remove_replaced_data()
        logger.info("wrote %s%s", self.dest, f" (+ {self.data_name})" if self.data_name else "")
        return self.dest

    def _remove_replaced_data(self) -> None:
        """Data files of earlier outputs at this destination: never referenced by the new ``.onnx``."""
        pattern = _data_file_pattern(self.dest.name)
        for entry in self.dest.parent.iterdir():
            if entry.name == self.data_name or not pattern.fullmatch(entry.name):
                continue
            if entry.resolve() in self._guarded or entry.is_symlink() or not entry.is_file():
                continue
            with contextlib.suppress(OSError):
                entry.unlink()
                logger.debug("removed %s, the data file of the output this one replaced", entry)

    def discard(self) -> None:
        """Remove the staged files; tensors given out by :meth:`map_tensors` and not committed become invalid."""
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        for tensor in self._mapped:
            tensor.invalidate()
        self._mapped = []

    def __enter__(self) -> StagedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.discard()


class TensorStore:
    """A scratch data file for the large tensors passes make, so that they are not held in memory.

    :meth:`put` appends a tensor of at least ``min_bytes`` to
    ``<folder>/.onnxpq-tmp-<pid>-*/tensors.data`` and returns an
    :class:`onnx_ir.ExternalTensor` over those bytes (read through a memory
    map, and copied in the kernel when the model is saved); a smaller tensor
    comes back as it is. Passes reach it through
    :meth:`onnxpq.core.context.PassContext.stored`; ``optimize`` gives one, in the
    output's folder, to the passes of a model with external data (a quantized
    3 GiB model is 0.75 GiB of new int8 weights). :meth:`close` removes the
    folder (a killed process leaves it to :func:`remove_stale_staging`); the
    tensors handed out are invalid after it.
    """

    #: Offsets are rounded up to this, so every tensor starts aligned for any element type.
    ALIGNMENT = 64

    def __init__(self, folder: str | os.PathLike[str], *, min_bytes: int = 64 * 1024) -> None:
        try:
            self.folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder))
        except OSError as exc:
            raise OutputError(f"cannot write in '{folder}' ({exc.strerror or exc})") from exc
        self.min_bytes = min_bytes
        self.location = "tensors.data"
        self._handle = (self.folder / self.location).open("wb")
        self._tensors: list[ir.ExternalTensor] = []
        self.bytes_stored = 0

    def put(self, tensor: ir.TensorProtocol) -> ir.TensorProtocol:
        """``tensor``'s bytes appended to the file, as an external tensor; ``tensor`` itself when small or already external."""
        if self._handle.closed:
            raise OnnxpqError(f"{self.folder}: the tensor store is closed")
        if tensor.nbytes < self.min_bytes or isinstance(tensor, ir.ExternalTensor):
            return tensor
        offset = -(-self._handle.tell() // self.ALIGNMENT) * self.ALIGNMENT
        self._handle.seek(offset)
        try:
            tensor.tofile(self._handle)
            self._handle.flush()
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot write a scratch tensor ({exc.strerror or exc})") from exc
        length = self._handle.tell() - offset
        if length != tensor.nbytes:
            raise OnnxpqError(f"tensor '{tensor.name}': {length} bytes written for {tensor.nbytes}")
        stored = ir.ExternalTensor(
            self.location, offset=offset, length=length, dtype=tensor.dtype, shape=ir.Shape(tensor.shape),
            name=tensor.name, doc_string=tensor.doc_string, metadata_props=dict(tensor.metadata_props),
            base_dir=str(self.folder),
        )  # fmt: skip
        self._tensors.append(stored)
        self.bytes_stored += length
        return stored

    def close(self) -> None:
        """Remove the file; the tensors :meth:`put` returned become invalid."""
        self._handle.close()
        for tensor in self._tensors:
            with contextlib.suppress(BufferError):  # a view alive elsewhere keeps its map until it goes
                tensor.release()
            tensor.invalidate()
        self._tensors = []
        shutil.rmtree(self.folder, ignore_errors=True)
        logger.debug("tensor store %s removed (%d bytes had gone through it)", self.folder, self.bytes_stored)

    def __enter__(self) -> TensorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _name_data_by_content(staged_onnx: Path, provisional: str, dest_name: str) -> str | None:
    """Rename the staged data file to ``<dest_name>.<sha256 prefix>.data`` and point the staged ``.onnx`` at it.

    Returns the new name, or None when no tensor went to the data file (every
    one under the size threshold): the empty file is removed.
    """
    folder = staged_onnx.parent
    proto = onnx.load(str(staged_onnx), load_external_data=False)
    entries = [
        entry
        for tensor, _ in _iter_tensors(proto)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location" and entry.value == provisional
    ]
    if not entries:
        (folder / provisional).unlink()
        return None
    final = f"{dest_name}.{_sha256_prefix(folder / provisional)}.data"
    os.replace(folder / provisional, folder / final)
    for entry in entries:
        entry.value = final
    staged_onnx.write_bytes(proto.SerializeToString())
    return final


def _external_attribute_nodes(model: ir.Model) -> list[tuple[ir.Node, str]]:
    found = []
    nodes = [*model.graph.all_nodes()]
    for function in model.functions.values():
        nodes.extend(function.all_nodes())
    for node in nodes:
        for name, attr in node.attributes.items():
            values = attr.value if attr.type == ir.AttributeType.TENSORS else [attr.value]
            if attr.type in (ir.AttributeType.TENSOR, ir.AttributeType.TENSORS) and any(
                isinstance(v, ir.ExternalTensor) for v in values
            ):
                found.append((node, name))
    return found


def _inline_attribute_tensors(model: ir.Model) -> ir.Model:
    """A clone whose external *attribute* tensors (Constant values, ...) are read into memory.

    onnx-ir's save moves only initializers to the new data file; attribute
    tensors would keep pointing at the input's data file. They are small in
    practice (Constant nodes), so they are written inline instead.
    """
    if not _external_attribute_nodes(model):
        return model
    clone = model.clone()
    for node, name in _external_attribute_nodes(clone):
        attr = node.attributes[name]

        def inline(tensor: ir.TensorProtocol) -> ir.TensorProtocol:
            if isinstance(tensor, ir.ExternalTensor):
                return ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name)
            return tensor

        if attr.type == ir.AttributeType.TENSOR:
            node.attributes[name] = ir.AttrTensor(name, inline(attr.value))
        else:
            node.attributes[name] = ir.AttrTensors(name, [inline(t) for t in attr.value])
    return clone


def stage_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    protect: tuple[str | os.PathLike[str], ...] = (),
    external_data: bool | None = None,
) -> StagedModel:
    """Write ``model`` for ``path`` into a temporary folder beside it, fsync and check it.

    Args:
        model: the model; it is not modified.
        path: destination ``.onnx``. Its external data, when written, is
            ``<name>.<sha256 prefix>.data`` beside it (named by content: the same
            model gives the same bytes and name; see the module docstring).
        protect: paths that must not be overwritten (the input model); the
            files the model's own external tensors point to are protected too.
        external_data: force (True) or forbid (False) an external data file;
            None decides by size (over :data:`EXTERNAL_ABOVE_BYTES`) and writes
            external data when the model already has external tensors.

    Raises:
        OutputError: the destination is protected, its folder is missing, or the
            write or the onnx checker failed (nothing is left behind).
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{dest}: the output folder '{folder}' does not exist")
    if dest.is_dir():
        raise OutputError(f"{dest}: is a folder; give a .onnx file name")
    provisional = f"{dest.name}.data"
    guarded = {Path(p).resolve() for p in protect} | external_files(model)
    pattern = _data_file_pattern(dest.name)
    for target in (dest, *(entry for entry in folder.iterdir() if pattern.fullmatch(entry.name))):
        if target.resolve() in guarded:
            raise OutputError(
                f"{target}: refusing to overwrite the input model or its data; choose another output path"
            )
    model = _inline_attribute_tensors(model)
    if external_data is None:
        external_data = bool(external_files(model)) or _tensor_bytes(model) > EXTERNAL_ABOVE_BYTES
    remove_stale_staging(folder)
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder))
    except OSError as exc:
        raise OutputError(f"{dest}: cannot write in '{folder}' ({exc.strerror or exc})") from exc
    staged_onnx = tmp_dir / dest.name
    try:
        try:
            if external_data:
                ir.save(model, staged_onnx, external_data=provisional, size_threshold_bytes=EXTERNAL_THRESHOLD_BYTES)
            else:
                ir.save(model, staged_onnx)
            data_name = (
                _name_data_by_content(staged_onnx, provisional, dest.name) if (tmp_dir / provisional).exists() else None
            )
            for file in (tmp_dir / (data_name or provisional), staged_onnx):
                if file.exists():
                    _fsync(file)
        except OSError as exc:
            raise OutputError(f"{dest}: cannot write the model ({exc.strerror or exc}); nothing was kept") from exc
        except ValueError as exc:
            raise OutputError(f"{dest}: cannot serialise the model ({exc})") from exc
        if data_name is not None and (folder / data_name).resolve() in guarded:
            raise OutputError(f"{folder / data_name}: refusing to overwrite the input model's data; choose another output path")
        try:
            _run_checker(staged_onnx)
        except ModelLoadError as exc:
            raise OutputError(f"{dest}: the written model failed the onnx checker; nothing was kept ({exc})") from exc
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return StagedModel(dest.resolve().parent / dest.name, tmp_dir, data_name, guarded)


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    protect: tuple[str | os.PathLike[str], ...] = (),
    external_data: bool | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically (see :func:`stage_model`); return the path."""
    return stage_model(model, path, protect=protect, external_data=external_data).commit()


def write_text_atomic(path: str | os.PathLike[str], text: str, *, protect: tuple[str | os.PathLike[str], ...] = ()) -> Path:
    """Write a text file (a report) atomically: temp file in the same folder, fsync, rename."""
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{dest}: the folder '{folder}' does not exist")
    if dest.resolve() in {Path(p).resolve() for p in protect}:
        raise OutputError(f"{dest}: refusing to overwrite the input model")
    fd, tmp = tempfile.mkstemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"{dest}: cannot write ({exc.strerror or exc})") from exc
    return dest
