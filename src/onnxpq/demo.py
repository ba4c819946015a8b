"""``onnxpq demo``: optimize the embedded digits CNN and report before/after.

The model and its held-out test split ship inside the package (built by
``models/digits.py`` from scikit-learn's bundled 8x8 digits); calibration uses
a separate split of the training data, never the test split.
"""

from __future__ import annotations

from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import Any

from onnxpq.errors import OutputError
from onnxpq.validation.figures import check_measurement_options
from onnxpq.workflows import optimize

__all__ = ["run_demo", "DEMO_MODEL", "DEMO_TEST", "DEMO_CALIBRATION"]

DEMO_MODEL = "digits_cnn.onnx"
DEMO_TEST = "digits_test.npz"
DEMO_CALIBRATION = "digits_calib.npz"


def run_demo(
    out_dir: Path,
    *,
    target: str = "cpu",
    latency_runs: int = 100,
    latency_batch: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the demo; write ``demo-digits.onnx``, ``demo-report.json`` and ``demo-report.html`` in ``out_dir``."""
    check_measurement_options(latency_runs=latency_runs, latency_batch=latency_batch)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create the folder ({exc.strerror})") from exc
    data = resources.files("onnxpq").joinpath("data")
    with ExitStack() as stack:
        model = stack.enter_context(resources.as_file(data.joinpath(DEMO_MODEL)))
        test = stack.enter_context(resources.as_file(data.joinpath(DEMO_TEST)))
        calibration = stack.enter_context(resources.as_file(data.joinpath(DEMO_CALIBRATION)))
        result = optimize(
            model,
            out_dir / "demo-digits.onnx",
            target=target,
            data=test,
            calibration=calibration,
            report=out_dir / "demo-report.json",
            html=out_dir / "demo-report.html",
            max_accuracy_drop=0.01,
            latency_runs=latency_runs,
            latency_batch=latency_batch,
            progress=progress,
        )
    return result.report
