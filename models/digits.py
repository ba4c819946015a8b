"""Train the demo CNN of onnxpq on scikit-learn's 8x8 digits and write the files the package ships.

What it builds, in ``--out-dir`` (default ``src/onnxpq/data``):

- ``digits_cnn.onnx``: the trained classifier, float32, input ``input`` of shape
  ``[batch, 1, 8, 8]`` (pixels scaled to ``[0, 1]``) and output ``logits`` of shape
  ``[batch, 10]``.
- ``digits_test.npz``: the held-out 25 % test split, arrays ``input`` (float32,
  ``[N, 1, 8, 8]``, preprocessed exactly as the model expects) and ``labels``
  (int64 class indices).
- ``digits_calib.npz``: 256 samples drawn from the *training* split, array
  ``input`` only, for calibrating activation ranges without touching the test data.

Why: the package needs a model that is small enough to ship and to test in
seconds, yet has what the passes work on in real exported graphs: Conv layers
followed by separate BatchNormalization nodes (for fold-batchnorm), a residual
Add coupling two Conv outputs (so channel pruning has to prune them together),
Gemm layers (``transB=1``), and an Identity node (for eliminate-identity).

The architecture (47,610 parameters)::

    input [B,1,8,8]
      conv1 3x3 1->16 pad 1 -> bn1 -> relu1
      conv2 3x3 16->32 pad 1 -> bn2 -> relu2 -> pool1 (MaxPool 2x2)   [B,32,4,4]
      conv3 3x3 32->32 pad 1 -> bn3 -> relu3 -> add1 (+ pool1 output)
      flatten -> flatten_identity -> fc1 (Gemm 512->64) -> relu4 -> fc2 (Gemm 64->10)
    logits [B,10]

The Conv layers carry no bias (as in torchvision's ResNets); the BatchNormalization
after each provides it, so folding ``W' = W * gamma / sqrt(var + eps)``,
``b' = beta - mean * gamma / sqrt(var + eps)`` has to create the Conv bias.

The ONNX graph is written by hand with ``onnx.helper`` from the trained state dict,
not with ``torch.onnx.export``, so that the BatchNormalization nodes survive as
separate nodes and node and initializer names are stable (``conv1``, ``bn1``,
``conv1.weight``, ``bn1.scale``, ``bn1.bias``, ``bn1.mean``, ``bn1.var``,
``fc1.weight``, ...). Opset 17, default domain only, IR version 8.

Training is deterministic (``torch.manual_seed(0)``, one thread, deterministic
algorithms, seeded generators for shuffling and augmentation), and the outputs
carry no timestamps, so two runs write byte-identical files. The script checks
that onnxruntime agrees with torch on the test split (max abs difference below
1e-4) and fails with a non-zero exit if either accuracy is below 98 %.

Usage::

    python models/digits.py [--out-dir src/onnxpq/data]

Needs the ``models`` extra (torch, scikit-learn) besides onnx and onnxruntime.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

__all__ = [
    "DigitsCNN",
    "build_onnx_model",
    "load_splits",
    "main",
    "train",
]

logger = logging.getLogger(__name__)

SEED = 0
OPSET = 17
IR_VERSION = 8
PRODUCER_NAME = "onnxpq-models"
MIN_ACCURACY = 0.98
MAX_ABS_DIFF = 1e-4
CALIB_SAMPLES = 256
BN_EPSILON = 1e-5
EPOCHS = 40
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
MAX_SHIFT = 1

MODEL_FILE = "digits_cnn.onnx"
TEST_FILE = "digits_test.npz"
CALIB_FILE = "digits_calib.npz"
DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "onnxpq" / "data"


class DigitsCNN(nn.Module):
    """Small residual CNN for 1x8x8 digits; see the module docstring for the layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16, eps=BN_EPSILON)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32, eps=BN_EPSILON)
        self.conv3 = nn.Conv2d(32, 32, kernel_size=3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32, eps=BN_EPSILON)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, 1, 8, 8]`` pixels in ``[0, 1]`` to ``[B, 10]`` logits."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        pooled = F.max_pool2d(x, kernel_size=2, stride=2)
        x = F.relu(self.bn3(self.conv3(pooled))) + pooled
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def load_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load the digits, scale pixels to ``[0, 1]`` and split 75/25 stratified.

    Returns:
        ``(x_train, x_test, y_train, y_test)``; ``x`` is float32 ``[N, 1, 8, 8]``
        (``pixel / 16``), ``y`` is int64 ``[N]``.
    """
    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )
    return (
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(y_test),
    )


def _random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a random ``dy, dx`` in ``[-MAX_SHIFT, MAX_SHIFT]``, zero-filling the border."""
    batch, _, height, width = x.shape
    padded = F.pad(x, (MAX_SHIFT, MAX_SHIFT, MAX_SHIFT, MAX_SHIFT))
    offsets = torch.randint(0, 2 * MAX_SHIFT + 1, (batch, 2), generator=generator)
    rows = offsets[:, 0:1] + torch.arange(height)  # [B, H]
    cols = offsets[:, 1:2] + torch.arange(width)  # [B, W]
    index = torch.arange(batch)[:, None, None]
    return padded[index, 0, rows[:, :, None], cols[:, None, :]][:, None, :, :]


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max logit equals the label."""
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def train(x_train: np.ndarray, y_train: np.ndarray) -> DigitsCNN:
    """Train :class:`DigitsCNN` with Adam and cosine learning-rate decay, deterministically.

    The schedule is fixed (``EPOCHS`` epochs); the test split plays no part in
    training or in choosing when to stop.
    """
    torch.manual_seed(SEED)
    model = DigitsCNN()
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.from_numpy(x_train)
    targets = torch.from_numpy(y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    steps_per_epoch = (len(inputs) + BATCH_SIZE - 1) // BATCH_SIZE
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * steps_per_epoch)
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(inputs), generator=generator)
        total_loss = 0.0
        for start in range(0, len(inputs), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            x = _random_shift(inputs[batch], generator)
            loss = F.cross_entropy(model(x), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
        logger.debug("epoch %d: train loss %.4f", epoch + 1, total_loss / len(inputs))
    model.eval()
    return model


def _initializer(name: str, tensor: torch.Tensor) -> TensorProto:
    """Float32 initializer named ``name`` holding ``tensor``'s values."""
    return numpy_helper.from_array(tensor.detach().cpu().numpy().astype(np.float32), name=name)


def build_onnx_model(model: DigitsCNN) -> onnx.ModelProto:
    """Write ``model`` (in eval mode) as an ONNX graph by hand, BatchNormalization kept as separate nodes.

    Node outputs are named ``<node>_out`` except the graph output ``logits``.
    Gemm weights keep torch's ``[out, in]`` layout with ``transB=1``.
    """
    state = model.state_dict()
    initializers: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv_bn_relu(index: int, x: str) -> str:
        conv, bn, relu = f"conv{index}", f"bn{index}", f"relu{index}"
        initializers.append(_initializer(f"{conv}.weight", state[f"{conv}.weight"]))
        for onnx_name, torch_name in (
            ("scale", "weight"),
            ("bias", "bias"),
            ("mean", "running_mean"),
            ("var", "running_var"),
        ):
            initializers.append(_initializer(f"{bn}.{onnx_name}", state[f"{bn}.{torch_name}"]))
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{conv}.weight"],
                [f"{conv}_out"],
                name=conv,
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[1, 1],
                dilations=[1, 1],
                group=1,
            )
        )
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                [f"{conv}_out", f"{bn}.scale", f"{bn}.bias", f"{bn}.mean", f"{bn}.var"],
                [f"{bn}_out"],
                name=bn,
                epsilon=BN_EPSILON,
            )
        )
        nodes.append(helper.make_node("Relu", [f"{bn}_out"], [f"{relu}_out"], name=relu))
        return f"{relu}_out"

    def gemm(name: str, x: str, y: str) -> str:
        initializers.append(_initializer(f"{name}.weight", state[f"{name}.weight"]))
        initializers.append(_initializer(f"{name}.bias", state[f"{name}.bias"]))
        nodes.append(
            helper.make_node(
                "Gemm", [x, f"{name}.weight", f"{name}.bias"], [y], name=name, transB=1
            )
        )
        return y

    x = conv_bn_relu(1, "input")
    x = conv_bn_relu(2, x)
    nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool1_out"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        )
    )
    x = conv_bn_relu(3, "pool1_out")
    nodes.append(helper.make_node("Add", [x, "pool1_out"], ["add1_out"], name="add1"))
    nodes.append(helper.make_node("Flatten", ["add1_out"], ["flatten_out"], name="flatten", axis=1))
    nodes.append(
        helper.make_node("Identity", ["flatten_out"], ["flatten_identity_out"], name="flatten_identity")
    )
    x = gemm("fc1", "flatten_identity_out", "fc1_out")
    nodes.append(helper.make_node("Relu", [x], ["relu4_out"], name="relu4"))
    gemm("fc2", "relu4_out", "logits")

    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=initializers,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER_NAME,
        ir_version=IR_VERSION,
    )
    onnx_model.doc_string = (
        "Demo CNN of onnxpq: sklearn 8x8 digits, input pixels / 16 in [0, 1]; built by models/digits.py."
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def _check(condition: bool, message: str) -> None:
    """Raise ``RuntimeError(message)`` unless ``condition`` holds."""
    if not condition:
        raise RuntimeError(message)


def verify(onnx_model: onnx.ModelProto, model: DigitsCNN, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Check that onnxruntime matches torch on the test split and both reach ``MIN_ACCURACY``.

    Raises:
        RuntimeError: if an accuracy is below ``MIN_ACCURACY`` or the outputs
            differ by ``MAX_ABS_DIFF`` or more.
    """
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (ort_logits,) = session.run(["logits"], {"input": x_test})
    torch_accuracy = _accuracy(torch_logits, y_test)
    ort_accuracy = _accuracy(ort_logits, y_test)
    max_diff = float(np.max(np.abs(torch_logits - ort_logits)))
    logger.info("test accuracy (torch): %.4f on %d samples", torch_accuracy, len(y_test))
    logger.info("test accuracy (onnxruntime): %.4f on %d samples", ort_accuracy, len(y_test))
    logger.info("max |torch - onnxruntime| on logits: %.3g", max_diff)
    _check(torch_accuracy >= MIN_ACCURACY, f"torch test accuracy {torch_accuracy:.4f} < {MIN_ACCURACY}")
    _check(ort_accuracy >= MIN_ACCURACY, f"onnxruntime test accuracy {ort_accuracy:.4f} < {MIN_ACCURACY}")
    _check(max_diff < MAX_ABS_DIFF, f"onnxruntime differs from torch by {max_diff:.3g} >= {MAX_ABS_DIFF}")


def main(argv: list[str] | None = None) -> None:
    """Train, verify and write the model, the test split and the calibration split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"folder for {MODEL_FILE}, {TEST_FILE} and {CALIB_FILE} (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    x_train, x_test, y_train, y_test = load_splits()
    model = train(x_train, y_train)
    logger.info("parameters: %d", sum(p.numel() for p in model.parameters()))
    onnx_model = build_onnx_model(model)
    verify(onnx_model, model, x_test, y_test)

    calib_index = np.random.default_rng(SEED).permutation(len(x_train))[:CALIB_SAMPLES]
    x_calib = np.ascontiguousarray(x_train[calib_index])

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(onnx_model, out_dir / MODEL_FILE)
    np.savez(out_dir / TEST_FILE, input=x_test, labels=y_test)
    np.savez(out_dir / CALIB_FILE, input=x_calib)
    for name in (MODEL_FILE, TEST_FILE, CALIB_FILE):
        logger.info("wrote %s (%d bytes)", out_dir / name, (out_dir / name).stat().st_size)


if __name__ == "__main__":
    main()
