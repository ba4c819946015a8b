"""What a killed save leaves behind, and what the next save does with it.

A save killed mid-way can leave a hidden ``.onnxpq-tmp-<pid>-*`` staging
folder (or report temp file) and, between its renames, the data file of the
output it was replacing or about to install. The next save to the same
destination removes those whose process is gone and leaves alone those of a
save still running; it never touches the input's data or unrelated files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from hostile_corpus import tiny
from onnxpq import io


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def _write(proto: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(proto, path, save_as_external_data=True, location="m.bin", size_threshold=0)
    return path


def test_stale_staging_and_stray_data_of_a_killed_save_are_removed_by_the_next(tmp_path: Path) -> None:
    model = io.load_model(_write(tiny(np.ones((4, 300), np.float32)), tmp_path / "in"))
    out = tmp_path / "out"
    out.mkdir()
    stale_dir = out / f"{io.STAGING_PREFIX}{dead_pid()}-abcd"
    stale_dir.mkdir()
    (stale_dir / "o.onnx").write_bytes(b"half a model")
    stale_file = out / f"{io.STAGING_PREFIX}{dead_pid()}-report"
    stale_file.write_text("half a report")
    stray = out / "o.onnx.0123456789abcdef.data"
    stray.write_bytes(b"data of an output that never got its .onnx")
    written = io.save_model(model, out / "o.onnx")
    names = sorted(os.listdir(out))
    assert len(names) == 2 and names[0] == "o.onnx" and names[1].startswith("o.onnx.") and names[1].endswith(".data")
    assert names[1] != stray.name
    onnx.checker.check_model(str(written))


def test_staging_of_a_running_save_is_left_alone(tmp_path: Path) -> None:
    model = io.load_model(_write(tiny(), tmp_path / "in"))
    out = tmp_path / "out"
    out.mkdir()
    live = out / f"{io.STAGING_PREFIX}{os.getppid()}-busy"  # our parent runs: its save may be in progress
    live.mkdir()
    io.save_model(model, out / "o.onnx")
    assert live.is_dir()


def test_unrelated_files_and_other_outputs_data_are_kept(tmp_path: Path) -> None:
    model = io.load_model(_write(tiny(), tmp_path / "in"))
    out = tmp_path / "out"
    out.mkdir()
    keep = ["notes.data", "other.onnx.0123456789abcdef.data", "o.onnx.backup", ".hidden-by-the-user"]
    for name in keep:
        (out / name).write_bytes(b"mine")
    io.save_model(model, out / "o.onnx")
    assert all((out / name).read_bytes() == b"mine" for name in keep)


def test_data_file_of_the_replaced_output_is_removed(tmp_path: Path) -> None:
    first = io.load_model(_write(tiny(np.zeros((4, 300), np.float32)), tmp_path / "a"))  # 4.8 kB: external
    second = io.load_model(_write(tiny(np.ones((4, 300), np.float32)), tmp_path / "b"))
    out = tmp_path / "out"
    out.mkdir()
    io.save_model(first, out / "o.onnx")
    old = [n for n in os.listdir(out) if n.endswith(".data")]
    io.save_model(second, out / "o.onnx")
    new = [n for n in os.listdir(out) if n.endswith(".data")]
    assert len(old) == len(new) == 1 and old != new
    assert sorted(os.listdir(out)) == sorted(["o.onnx", *new])


def test_small_tensors_leave_no_empty_data_file(tmp_path: Path) -> None:
    """A model with external data whose tensors are all under the threshold is written inline: no empty data file."""
    model = io.load_model(_write(tiny(), tmp_path / "in"))
    out = tmp_path / "out"
    out.mkdir()
    io.save_model(model, out / "o.onnx")
    assert os.listdir(out) == ["o.onnx"]
