"""The verified pass manager: records, structure and numerical checks, rollback, reproducers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxpq.core.context import PassContext
from onnxpq.core.instruments import ProgressDisplay
from onnxpq.core.manager import PassManager
from onnxpq.core.pass_base import OnnxpqPass
from onnxpq.errors import PassFailed
from onnxpq.io import load_model
from onnxpq.passes.cleanup import EliminateIdentityPass

TEXT = """
<ir_version: 8, opset_import: ["": 17]>
g (float[N, 4] x) => (float[N, 3] y) {
  a = Identity(x)
  h = MatMul(a, w)
  y = Relu(h)
}
"""


def _model() -> ir.Model:
    proto = onnx.parser.parse_model(TEXT)
    rng = np.random.default_rng(0)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"))
    return ir.from_proto(proto)


def _bytes(model: ir.Model) -> bytes:
    return ir.to_proto(model).SerializeToString()


class _Raises(OnnxpqPass):
    """Test-only: raises halfway through, after damaging the graph."""

    name = "test-raises"
    exact = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model.graph.remove(next(iter(model.graph)), safe=False)
        raise RuntimeError("boom")


class _Dangles(OnnxpqPass):
    """Test-only: removes the MatMul without rewiring its consumer (a dangling input)."""

    name = "test-dangles"
    exact = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        matmul = next(n for n in model.graph if n.op_type == "MatMul")
        model.graph.remove(matmul, safe=False)
        return ir.passes.PassResult(model, True)


class _Scales(OnnxpqPass):
    """Test-only: doubles the weight; declared exact, or lossy, by option."""

    name = "test-scales"

    def __init__(self, claims_exact: bool = True) -> None:
        self.claims_exact = claims_exact

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return self.claims_exact

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        w = model.graph.initializers["w"]
        w.const_value = ir.tensor(w.const_value.numpy() * 2.0, name="w")
        return ir.passes.PassResult(model, True)


class _Counts:
    """Test-only analysis counting how often it is computed."""

    computed = 0

    @classmethod
    def compute(cls, model: ir.Model) -> _Counts:
        cls.computed += 1
        return cls()


class _UsesAnalysis(OnnxpqPass):
    """Test-only: reads the _Counts analysis and optionally modifies the model."""

    name = "test-uses-analysis"
    exact = True

    def __init__(self, modify: bool = False) -> None:
        self.modify = modify

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        PassContext.current().analyses.get(_Counts, model)
        if self.modify:
            model.graph.doc_string = (model.graph.doc_string or "") + "x"
        return ir.passes.PassResult(model, self.modify)


class _UsesAnalysisPreserving(_UsesAnalysis):
    name = "test-uses-analysis-preserving"
    preserves = (_Counts,)


def test_records_hold_node_and_parameter_deltas() -> None:
    manager = PassManager([EliminateIdentityPass()], progress=False)
    result = manager(_model())
    (record,) = manager.records
    assert result.modified
    assert (record.nodes_before, record.nodes_after) == (3, 2)
    assert record.params_before == record.params_after == 12
    assert record.numerical_check.startswith("passed")
    assert record.seconds >= 0.0


def test_the_input_model_is_never_modified() -> None:
    model = _model()
    before = _bytes(model)
    result = PassManager([EliminateIdentityPass(), _Scales(claims_exact=False)], progress=False)(model)
    assert _bytes(model) == before
    assert result.model is not model


@pytest.mark.parametrize("bad_pass", [_Raises(), _Dangles(), _Scales(claims_exact=True)], ids=lambda p: p.name)
def test_failing_pass_is_rolled_back_and_named(bad_pass: OnnxpqPass) -> None:
    model = _model()
    first = EliminateIdentityPass()
    expected = _bytes(PassManager([first], progress=False)(model).model)
    manager = PassManager([first, bad_pass], progress=False)
    with pytest.raises(PassFailed) as info:
        manager(model)
    assert info.value.pass_name == bad_pass.name
    assert f"pass '{bad_pass.name}' (#2) failed and was rolled back" in str(info.value)
    assert _bytes(info.value.model) == expected


def test_exact_pass_that_changes_outputs_is_caught_by_the_numerical_check() -> None:
    with pytest.raises(PassFailed, match="an exact pass changed output 0"):
        PassManager([_Scales(claims_exact=True)], progress=False)(_model())


def test_lossy_pass_may_change_outputs() -> None:
    manager = PassManager([_Scales(claims_exact=False)], progress=False)
    manager(_model())
    assert manager.records[0].numerical_check == "not applicable (lossy pass)"


def test_dangling_input_is_caught_by_the_structure_check_even_without_numerics() -> None:
    with pytest.raises(PassFailed, match="dangling input"):
        PassManager([_Dangles()], check_numerics=False, progress=False)(_model())


def test_dump_on_failure_writes_a_reproducer(tmp_path: Path) -> None:
    folder = tmp_path / "repro"
    with pytest.raises(PassFailed, match="reproducer in"):
        PassManager([EliminateIdentityPass(), _Raises()], progress=False, dump_on_failure=folder)(_model())
    assert (folder / "pipeline.txt").read_text().strip() == "test-raises"
    assert "RuntimeError: boom" in (folder / "error.txt").read_text()
    reloaded = load_model(folder / "model.onnx")
    assert [n.op_type for n in reloaded.graph] == ["MatMul", "Relu"]


def test_modifying_pass_invalidates_cached_analyses() -> None:
    _Counts.computed = 0
    with PassContext():
        PassManager([_UsesAnalysis(modify=True), _UsesAnalysis()], progress=False)(_model())
    assert _Counts.computed == 2


def test_declared_preserved_analyses_survive_modification() -> None:
    _Counts.computed = 0
    with PassContext():
        PassManager([_UsesAnalysisPreserving(modify=True), _UsesAnalysis()], progress=False)(_model())
    assert _Counts.computed == 1


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_display_writes_one_status_per_pass_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    stream = _Tty()
    display = ProgressDisplay(1, stream)
    manager = PassManager([EliminateIdentityPass()], progress=False, instruments=[display])
    manager(_model())
    assert "[1/1] eliminate-identity: modified" in stream.getvalue()


def test_progress_display_is_silent_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    stream = _Tty()
    PassManager([EliminateIdentityPass()], progress=False, instruments=[ProgressDisplay(1, stream)])(_model())
    assert stream.getvalue() == ""


class _CountsRuns(OnnxpqPass):
    """Test-only: a lossy pass that scales the weight by ``factor`` and counts its runs."""

    name = "test-counts-runs"
    exact = False
    runs = 0

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        type(self).runs += 1
        w = model.graph.initializers["w"]
        w.const_value = ir.tensor(w.const_value.numpy() * self.factor, name="w")
        return ir.passes.PassResult(model, True)


def _checkpointed(model: ir.Model) -> tuple[PassManager, ir.passes.PassResult]:
    manager = PassManager([EliminateIdentityPass(), _CountsRuns(2.0), _Scales(claims_exact=False)],
                          progress=False, checkpoint_after=2)  # fmt: skip
    return manager, manager(model)


def test_a_resumed_run_skips_the_unchanged_passes_and_gives_the_full_runs_output() -> None:
    model = _model()
    first, _ = _checkpointed(model)
    assert first.checkpoint is not None and len(first.checkpoint.texts) == 2
    _CountsRuns.runs = 0
    changed_tail = [EliminateIdentityPass(), _CountsRuns(2.0), _CountsRuns(3.0)]
    resumed = PassManager(changed_tail, progress=False, resume=first.checkpoint)
    full = PassManager(changed_tail, progress=False)
    resumed_model, full_model = resumed(model).model, full(model).model
    assert _CountsRuns.runs == 1 + 2  # the resumed run ran only its third pass; the full run its second and third
    assert _bytes(resumed_model) == _bytes(full_model)
    assert [r.name for r in resumed.records] == [r.name for r in full.records]
    assert resumed.records[:2] == first.records[:2]
    assert _bytes(first.checkpoint.model) == _bytes(PassManager(changed_tail[:2], progress=False)(model).model)


@pytest.mark.parametrize("change", ["other input object", "other option before the checkpoint"])
def test_a_checkpoint_is_not_used_for_another_input_or_other_passes(change: str) -> None:
    model = _model()
    first, _ = _checkpointed(model)
    _CountsRuns.runs = 0
    passes = [EliminateIdentityPass(), _CountsRuns(5.0 if change.startswith("other option") else 2.0), _Scales(False)]
    source = _model() if change == "other input object" else model
    resumed = PassManager(passes, progress=False, resume=first.checkpoint)(source).model
    assert _CountsRuns.runs == 1
    assert _bytes(resumed) == _bytes(PassManager(passes, progress=False)(source).model)


def test_every_run_starts_without_cached_analyses() -> None:
    """Analyses are keyed by a model object's id, and a new run's clone may reuse a freed model's id."""
    _Counts.computed = 0
    with PassContext():
        PassManager([_UsesAnalysisPreserving()], progress=False)(_model())
        PassManager([_UsesAnalysisPreserving()], progress=False)(_model())
    assert _Counts.computed == 2
