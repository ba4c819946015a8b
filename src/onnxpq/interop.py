"""onnx-graphsurgeon interop (extra ``[gs]``): hand a ``gs.Graph`` through onnxpq and get one back.

TensorRT-side scripts build and edit graphs with onnx-graphsurgeon; these
functions let such a script run an onnxpq pipeline without writing files::

    import onnx_graphsurgeon as gs
    from onnxpq.interop import optimize_graphsurgeon

    graph = gs.import_onnx(onnx.load("model.onnx"))
    ...                                   # TensorRT-side edits
    graph = optimize_graphsurgeon(graph, target="gpu", data="val.npz")
    onnx.save(gs.export_onnx(graph), "model.int8.onnx")

* :func:`from_graphsurgeon` — ``gs.Graph`` to an ``onnx_ir.Model`` (through
  ``gs.export_onnx``: opset imports and custom domains such as
  ``com.microsoft`` are kept, so are graph-local functions);
* :func:`to_graphsurgeon` — an ``onnx_ir.Model``, ``onnx.ModelProto`` or path
  to a ``gs.Graph`` (through ``gs.import_onnx``);
* :func:`optimize_graphsurgeon` — :func:`onnxpq.workflows.optimize` on a
  ``gs.Graph``: the graph is written to a private temporary folder, optimized,
  validated and measured exactly as on the command line (same pipeline,
  calibration, checks, gate, reports), and the result comes back as a new
  ``gs.Graph``. The graph given is not modified.

What does not survive onnx-graphsurgeon (0.6): the model's and the nodes'
``metadata_props`` (so a node's ``onnxpq.bits`` note, which marks a 4-bit grid
stored in int8, is lost and reports count such weights at their storage
width; opset 21's INT4/UINT4 tensors keep their width), and the model's
``ir_version`` (gs writes the lowest one its opset needs). A warning names
what is dropped.

Size: a ``gs.Graph`` holds every tensor in memory and ``gs.import_onnx``
reads tensors from the protobuf, so :func:`to_graphsurgeon` loads external
data into memory — up to ``max_bytes`` (1.8 GB by default, under protobuf's
2 GiB limit); beyond that it refuses with :class:`~onnxpq.errors.OutputError`
and says to use the file-based API (``onnxpq.optimize`` on the path), which
streams external data. :func:`optimize_graphsurgeon` writes large graphs
with external data, so the pipeline itself is not limited to 2 GiB.

Without onnx-graphsurgeon installed, every function raises
:class:`MissingExtraError` (an :class:`ImportError` and an
:class:`~onnxpq.errors.OnnxpqError`) that says ``pip install 'onnxpq[gs]'``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxpq.errors import OnnxpqError, OutputError
from onnxpq.io import INLINE_LIMIT_BYTES, load_model, save_model

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

    from onnxpq.targets.profile import Target

__all__ = ["MissingExtraError", "from_graphsurgeon", "to_graphsurgeon", "optimize_graphsurgeon"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = "pip install 'onnxpq[gs]' (or: pip install onnx-graphsurgeon)"


class MissingExtraError(OnnxpqError, ImportError):
    """An optional dependency (a pip extra) is not installed."""


def _graphsurgeon() -> Any:
    try:
        import onnx_graphsurgeon
    except ImportError as exc:
        raise MissingExtraError(f"onnx-graphsurgeon is not installed; {_INSTALL_HINT}") from exc
    return onnx_graphsurgeon


def _check_graph(gs_module: Any, graph: object) -> None:
    if not isinstance(graph, gs_module.Graph):
        raise TypeError(f"expected an onnx_graphsurgeon.Graph, got {type(graph).__name__}")


def from_graphsurgeon(graph: gs.Graph) -> ir.Model:
    """The ``gs.Graph`` as an ``onnx_ir.Model`` (a copy: later edits of either do not affect the other).

    Raises:
        MissingExtraError: onnx-graphsurgeon is not installed.
        TypeError: ``graph`` is not a ``gs.Graph``.
        OnnxpqError: onnx-graphsurgeon cannot export the graph (e.g. a tensor without a dtype).
    """
    gs_module = _graphsurgeon()
    _check_graph(gs_module, graph)
    try:
        proto = gs_module.export_onnx(graph, do_type_check=True)
    except Exception as exc:  # noqa: BLE001 - gs raises its own and numpy's exception types
        raise OnnxpqError(f"onnx-graphsurgeon cannot export the graph {graph.name!r}: {exc}") from exc
    return ir.from_proto(proto)


def _materialized(model: ir.Model, max_bytes: int) -> ir.Model:
    """A clone whose external tensors are in memory (the model itself is untouched); refuses beyond ``max_bytes``."""
    total = 0
    external: list[ir.Value] = []
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None:
                total += tensor.nbytes
                if isinstance(tensor, ir.ExternalTensor):
                    external.append(value)
    if total > max_bytes:
        raise OutputError(
            f"the model has {total / 2**30:.2f} GiB of tensors, over the {max_bytes / 2**30:.2f} GiB an in-memory "
            "gs.Graph is allowed here (onnx-graphsurgeon reads tensors from one protobuf, capped at 2 GiB); "
            "optimize it by path with onnxpq.optimize, which streams external data"
        )
    if not external:
        return model
    clone = model.clone()
    for graph in clone.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
    logger.info("to_graphsurgeon: loaded %d external tensor(s) into memory", len(external))
    return clone


def _dropped_metadata(model: ir.Model) -> list[str]:
    dropped = []
    if model.metadata_props:
        dropped.append("model metadata_props")
    noted = sum(1 for node in ir.traversal.RecursiveGraphIterator(model.graph) if node.metadata_props)
    if noted:
        dropped.append(f"metadata_props of {noted} node(s)")
    return dropped


def to_graphsurgeon(
    model: ir.Model | onnx.ModelProto | str | os.PathLike[str],
    *,
    max_bytes: int = INLINE_LIMIT_BYTES,
) -> gs.Graph:
    """A ``gs.Graph`` of ``model`` (an ``onnx_ir.Model``, an ``onnx.ModelProto``, or a path loaded safely).

    External data is loaded into memory (``max_bytes`` at most, see the module docstring).

    Raises:
        MissingExtraError: onnx-graphsurgeon is not installed.
        OutputError: the tensors exceed ``max_bytes``.
        ModelLoadError, UnsafeModelError: a path that does not load safely.
    """
    gs_module = _graphsurgeon()
    if isinstance(model, onnx.ModelProto):
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise OutputError(
                "the ModelProto refers to external data it does not carry; give the model's path instead "
                "(it is then loaded safely, external data included)"
            )
        model = ir.from_proto(model)
    elif not isinstance(model, ir.Model):
        model = load_model(model)
    dropped = _dropped_metadata(model)
    if dropped:
        logger.warning("onnx-graphsurgeon keeps no %s; they are dropped", " and no ".join(dropped))
    proto = ir.to_proto(_materialized(model, max_bytes))
    return gs_module.import_onnx(proto)


def _npz(data: str | os.PathLike[str] | Mapping[str, np.ndarray] | None, folder: Path, name: str) -> str | None:
    if data is None or isinstance(data, (str, os.PathLike)):
        return None if data is None else os.fspath(data)
    path = folder / f"{name}.npz"
    np.savez(path, **{key: np.asarray(value) for key, value in data.items()})
    return str(path)


def optimize_graphsurgeon(
    graph: gs.Graph,
    *,
    target: str | os.PathLike[str] | Target = "cpu",
    pipeline: str | None = None,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None,
    calibration: str | os.PathLike[str] | Mapping[str, np.ndarray] | None = None,
    max_bytes: int = INLINE_LIMIT_BYTES,
    **options: Any,
) -> gs.Graph:
    """Run an onnxpq pipeline on a ``gs.Graph``; return the optimized graph (``graph`` itself is not modified).

    Args:
        graph: the graph (it must export with ``gs.export_onnx``: every tensor typed).
        target, pipeline: as for :func:`onnxpq.workflows.optimize`.
        data, calibration: ``.npz`` paths, or mappings of input name to array
            (first axis = samples, plus an optional ``labels`` array in ``data``).
        max_bytes: tensor bytes the returned in-memory graph may hold (see :func:`to_graphsurgeon`).
        options: any other keyword of :func:`onnxpq.workflows.optimize`
            (``report``, ``html``, ``max_accuracy_drop``, ``latency_runs``, ...).

    Raises:
        MissingExtraError: onnx-graphsurgeon is not installed.
        OnnxpqError: as :func:`onnxpq.workflows.optimize` (bad pipeline, data, failed pass ...).
    """
    from onnxpq.workflows import optimize

    model = from_graphsurgeon(graph)
    name = graph.name or "graph"
    with tempfile.TemporaryDirectory(prefix="onnxpq-gs-") as tmp:
        folder = Path(tmp)
        source, output = folder / "model.onnx", folder / "optimized.onnx"
        save_model(model, source)
        result = optimize(
            source, output, target=target, pipeline=pipeline,
            data=_npz(data, folder, "data"), calibration=_npz(calibration, folder, "calibration"), **options,
        )
        logger.info("optimize_graphsurgeon %r: %s", name, result.report["pipeline"])
        optimized = to_graphsurgeon(load_model(output), max_bytes=max_bytes)
    optimized.name = graph.name
    return optimized
