"""Built-in passes; importing this package registers them."""

from onnxpq.passes import cleanup, prune, quantize  # noqa: F401
