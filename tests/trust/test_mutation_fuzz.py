"""Seeded byte mutations of legal models through ``onnxpq optimize``: never a traceback, never exit 3.

Each mutant flips bits, overwrites or deletes one to four bytes of a legal
model's protobuf. Whatever comes out, onnxpq must either refuse it (exit 2,
one ``onnxpq: error:`` line, nothing in the output folder) or optimize it
(exit 0, an output the onnx checker accepts); the input folder never changes.
Loop models are left out: a mutated trip count legally runs for ever (that is
what ``--isolate-timeout`` is for, see test_isolation.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

from hostile_corpus import CASES, EXACT_PIPELINE, build_case
from onnxpq.cli import main

BASES = ["if-subgraph", "local-function", "string-initializer", "ext-valid-subfolder", "scan"]
#: Mutants per base model; ONNXPQ_FUZZ_MUTANTS raises it for a longer hunt.
MUTANTS = int(os.environ.get("ONNXPQ_FUZZ_MUTANTS", "100"))


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        position, kind = rng.randrange(len(out)), rng.random()
        if kind < 0.6:
            out[position] ^= 1 << rng.randrange(8)
        elif kind < 0.8:
            out[position] = rng.randrange(256)
        else:
            del out[position]
    return bytes(out)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("base", BASES)
def test_mutants_are_refused_in_one_line_or_optimized(base: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert CASES[base].expect == "ok"
    in_dir = tmp_path / "in"
    model = build_case(base, in_dir)
    original = model.read_bytes()
    rng = random.Random(f"{base}-20241123")
    problems, outcomes = [], {0: 0, 2: 0}
    for index in range(MUTANTS):
        model.write_bytes(mutate(original, rng))
        before = tree_digest(in_dir)
        out = tmp_path / f"out{index}"
        out.mkdir()
        code = main(["optimize", str(model), "-o", str(out / "o.onnx"), "--pipeline", EXACT_PIPELINE, "--latency-runs", "1", "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        outcomes[code] = outcomes.get(code, 0) + 1
        if tree_digest(in_dir) != before:
            problems.append(f"mutant {index}: the input changed")
        if code == 2:
            if len(err) != 1 or not err[0].startswith("onnxpq: error: ") or os.listdir(out):
                problems.append(f"mutant {index}: exit 2 but stderr {err!r}, output folder {os.listdir(out)}")
        elif code == 0:
            onnx.checker.check_model(str(out / "o.onnx"))
        else:
            problems.append(f"mutant {index}: exit {code}: {err!r}")
    assert not problems, "\n".join(problems)
    assert outcomes[2] > 0, f"no mutant was refused: {outcomes}"
