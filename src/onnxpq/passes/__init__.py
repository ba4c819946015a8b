"""Built-in passes; importing this package registers them."""

from onnxpq.passes import cleanup, quantize  # noqa: F401
