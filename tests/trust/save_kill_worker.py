"""A long-lived helper for the fault-injection tests: forks a real save, SIGKILLs it after a delay.

Run as ``python save_kill_worker.py DEST MODEL_A MODEL_B``. It imports onnxpq
and loads both models once (external tensors memory-mapped), then answers one
command per stdin line:

* ``save NAME DELAY``: fork; the child runs ``onnxpq.io.save_model(model NAME,
  DEST)`` and exits; the worker sleeps DELAY seconds, SIGKILLs the child if it
  still runs, reaps it and prints ``killed SECONDS`` or ``finished SECONDS``
  (how long the child lived).

Forking from this worker (not from pytest) keeps each kill cheap: the child
inherits the imported modules and the loaded models, so it starts writing at
once, and pytest's own threads never reach a forked child.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    from onnxpq import io

    dest, paths = Path(sys.argv[1]), {"A": sys.argv[2], "B": sys.argv[3]}
    models = {name: io.load_model(path, check=False) for name, path in paths.items()}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        command, name, delay_text = line.split()
        if command != "save":
            raise SystemExit(f"unknown command {command!r}")
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: the real save path, then leave without running any cleanup
            try:
                io.save_model(models[name], dest)
            finally:
                os._exit(0)
        deadline = start + float(delay_text)
        finished = False
        while time.perf_counter() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                finished = True
                break
            time.sleep(0.0005)
        if not finished:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        sys.stdout.write(f"{'finished' if finished else 'killed'} {time.perf_counter() - start:.4f}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
