"""Fault injection on the output path: SIGKILL mid-save, a full disk, a file-size limit.

Kill: a worker process (``save_kill_worker.py``) forks the real
``onnxpq.io.save_model`` writing a model with external data over an existing
output and SIGKILLs it after a seeded random delay that spans the whole save.
After every kill the destination must hold the old complete output or the new
complete output: the ``.onnx`` and the data file it references are
byte-identical to one of two reference saves, pass the onnx checker and
compute that model's outputs in onnxruntime. Visible files are the ``.onnx``
plus data files of those two outputs only (a kill between the renames may
leave the *other* output's data file, unreferenced); a hidden staging folder
is left only by the latest kill (the next save removes stale ones), and the
save after the last kill leaves exactly the ``.onnx`` and its data.

Disk full: ``onnxpq optimize`` writes onto a 1 MiB tmpfs (root only; this is
the real ENOSPC path), onto a 4 KiB one where the model fits but its report
does not, and, without root, under RLIMIT_FSIZE (EFBIG): exit 2, one error
line naming the cause, nothing left in the output folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpq import io

WORKER = Path(__file__).with_name("save_kill_worker.py")
#: Weights per model: LAYERS square float32 matrices of SIDE (4 MiB each at 1024).
LAYERS, SIDE = 4, 1024
DEST_NAME = "out.onnx"
DATA_NAME = re.compile(re.escape(DEST_NAME) + r"\.[0-9a-f]{16}\.data")


def chain_model(seed: int) -> onnx.ModelProto:
    """x[1, SIDE] through LAYERS MatMul+Tanh layers; weights seeded."""
    rng = np.random.default_rng(seed)
    nodes, weights, current = [], [], "x"
    for layer in range(LAYERS):
        weight = (rng.standard_normal((SIDE, SIDE)) / np.sqrt(SIDE)).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"W{layer}"))
        nodes += [helper.make_node("MatMul", [current, f"W{layer}"], [f"m{layer}"]), helper.make_node("Tanh", [f"m{layer}"], [f"t{layer}"])]
        current = f"t{layer}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SIDE])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, SIDE])], weights)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


class Outcome(NamedTuple):
    onnx_bytes: bytes
    data_name: str
    data_sha: str
    output: np.ndarray


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_location(onnx_path: Path) -> str:
    proto = onnx.load(str(onnx_path), load_external_data=False)
    return {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}.pop()


def run(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.linspace(-1, 1, SIDE, dtype=np.float32).reshape(1, SIDE)})[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Outcome]]:
    """Two models (inputs with external data) and the reference result of saving each to ``out.onnx``."""
    root = tmp_path_factory.mktemp("kill-models")
    found = {}
    for name, seed in (("A", 1), ("B", 2)):
        folder = root / f"in-{name}"
        folder.mkdir()
        onnx.save(chain_model(seed), folder / "m.onnx", save_as_external_data=True, location="m.bin", size_threshold=0)
        reference = root / f"ref-{name}"
        reference.mkdir()
        written = io.save_model(io.load_model(folder / "m.onnx"), reference / DEST_NAME)
        location = data_location(written)
        onnx.checker.check_model(str(written))
        found[name] = (folder / "m.onnx", Outcome(written.read_bytes(), location, sha(reference / location), run(written)))
    assert found["A"][1].data_name != found["B"][1].data_name
    return found


class Worker:
    """The fork-and-kill helper process."""

    def __init__(self, dest: Path, model_a: Path, model_b: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), str(dest), str(model_a), str(model_b)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"

    def save(self, name: str, delay: float) -> tuple[bool, float]:
        """(killed, seconds the save ran)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"save {name} {delay:.6f}\n")
        self.process.stdin.flush()
        status, seconds = self.process.stdout.readline().split()
        return status == "killed", float(seconds)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def current_outcome(folder: Path, outcomes: dict[str, Outcome]) -> str:
    """Which complete output the destination holds; fails on anything else (a mix, a missing file, a stray)."""
    dest = folder / DEST_NAME
    onnx_bytes = dest.read_bytes()
    matches = [name for name, outcome in outcomes.items() if outcome.onnx_bytes == onnx_bytes]
    assert len(matches) == 1, "the .onnx is neither the old nor the new output"
    name = matches[0]
    outcome = outcomes[name]
    assert data_location(dest) == outcome.data_name
    assert sha(folder / outcome.data_name) == outcome.data_sha, "the data file the .onnx references is not complete"
    visible = {entry for entry in os.listdir(folder) if not entry.startswith(".")}
    allowed = {DEST_NAME} | {o.data_name for o in outcomes.values()}
    assert visible <= allowed, f"stray visible files: {sorted(visible - allowed)}"
    onnx.checker.check_model(str(dest))
    np.testing.assert_array_equal(run(dest), outcome.output)
    return name


def kill_many(models: dict[str, tuple[Path, Outcome]], folder: Path, kills: int, seed: int) -> dict[str, int]:
    """Write alternately A over B and B over A, killing each save after a random delay; return tallies."""
    outcomes = {name: outcome for name, (_, outcome) in models.items()}
    io.save_model(io.load_model(models["A"][0]), folder / DEST_NAME)
    worker = Worker(folder / DEST_NAME, models["A"][0], models["B"][0])
    tally = {"killed": 0, "finished": 0, "old": 0, "new": 0, "stray_data": 0}
    try:
        _, full = worker.save("B", 60.0)  # one uninterrupted save: how long a save takes here
        assert current_outcome(folder, outcomes) == "B"
        rng = np.random.default_rng(seed)
        held = "B"
        for _ in range(kills):
            target = "A" if held == "B" else "B"
            killed, ran = worker.save(target, float(rng.uniform(0.0, 1.3 * full)))
            tally["killed" if killed else "finished"] += 1
            if killed and ran >= full:  # saves got slower (a busy machine): keep the delays spanning a whole save
                full = ran * 1.25
            now = current_outcome(folder, outcomes)
            tally["new" if now == target else "old"] += 1
            visible_data = [e for e in os.listdir(folder) if DATA_NAME.fullmatch(e)]
            tally["stray_data"] += len(visible_data) > 1
            hidden = [e for e in os.listdir(folder) if e.startswith(".")]
            assert len(hidden) <= 1, f"stale staging folders were not cleaned up: {hidden}"
            held = now
        worker.save("A" if held == "B" else "B", 60.0)  # the run after the last kill cleans up
    finally:
        worker.close()
    final = current_outcome(folder, outcomes)
    assert sorted(os.listdir(folder)) == sorted([DEST_NAME, outcomes[final].data_name]), "leftovers after a clean save"
    return tally


@pytest.mark.heavy
def test_a_hundred_kills_leave_the_old_or_the_new_output(models: dict[str, tuple[Path, Outcome]], tmp_path: Path) -> None:
    tally = kill_many(models, tmp_path, kills=100, seed=20241123)
    print(f"kill tally: {tally}")
    assert tally["old"] + tally["new"] == 100
    assert tally["killed"] >= 20 and tally["old"] >= 10, f"the delays did not land inside the save: {tally}"
    assert tally["new"] >= 3, f"(almost) no save completed: the delays did not span a whole save: {tally}"


def test_five_kills_leave_the_old_or_the_new_output(models: dict[str, tuple[Path, Outcome]], tmp_path: Path) -> None:
    tally = kill_many(models, tmp_path, kills=5, seed=5)
    assert tally["old"] + tally["new"] == 5


# --------------------------------------------------------------------------- disk full


def _optimize_cmd(model: Path, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "onnxpq.cli", "optimize", str(model), "-o", str(out_dir / DEST_NAME),
            "--report", str(out_dir / "r.json"), "--pipeline", "eliminate-dead", "--latency-runs", "2"]  # fmt: skip


def _assert_clean_failure(done: subprocess.CompletedProcess[str], out_dir: Path, cause: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxpq: error: "), done.stderr
    assert re.search(cause, lines[0]), lines[0]
    assert os.listdir(out_dir) == [], f"left behind: {os.listdir(out_dir)}"


@pytest.fixture
def two_mib_model(tmp_path: Path) -> Path:
    """A 2 MiB model (one 724x724 float32 weight) with external data."""
    folder = tmp_path / "in"
    folder.mkdir()
    weight = np.random.default_rng(0).standard_normal((724, 724)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 724])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 724])],
                              [numpy_helper.from_array(weight, "W")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, location="m.bin", size_threshold=0)
    return folder / "m.onnx"


@pytest.fixture
def tmpfs(tmp_path: Path):  # noqa: ANN201 - a generator fixture
    """Factory: mount a tmpfs of the given size (e.g. "1m") under tmp_path; unmounted afterwards."""
    mounted: list[Path] = []
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; the RLIMIT_FSIZE test covers the same path")

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs-{size}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"mount -t tmpfs refused here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_full_disk_exits_2_and_leaves_nothing(two_mib_model: Path, tmpfs, tmp_path: Path) -> None:  # noqa: ANN001
    out_dir = tmpfs("1m") / "out"
    out_dir.mkdir()
    before = sha(two_mib_model.with_name("m.bin"))
    done = subprocess.run(_optimize_cmd(two_mib_model, out_dir), cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    _assert_clean_failure(done, out_dir, "No space left on device")
    assert sha(two_mib_model.with_name("m.bin")) == before


def test_disk_full_at_the_report_leaves_no_model(tmpfs, tmp_path: Path) -> None:  # noqa: ANN001
    """The model (about 100 bytes) fits, its report (5 kB) does not: nothing stays, not even the model."""
    folder = tmp_path / "in"
    folder.mkdir()
    onnx.save(relu_model(), folder / "m.onnx")
    out_dir = tmpfs("4k")
    done = subprocess.run(_optimize_cmd(folder / "m.onnx", out_dir), cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    _assert_clean_failure(done, out_dir, r"r\.json.*No space left on device")


def relu_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def test_file_size_limit_exits_2_and_leaves_nothing(two_mib_model: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = subprocess.run(_optimize_cmd(two_mib_model, out_dir), cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False, preexec_fn=_limit_file_size)  # fmt: skip
    _assert_clean_failure(done, out_dir, "File too large")

