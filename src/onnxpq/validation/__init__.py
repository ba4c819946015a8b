"""Validation in onnxruntime: data, fidelity, task accuracy, latency, size and cost figures."""

from onnxpq.validation.data import Dataset, load_dataset
from onnxpq.validation.fidelity import Fidelity, compare_outputs
from onnxpq.validation.figures import ModelFigures, measure_pair

__all__ = ["Dataset", "load_dataset", "Fidelity", "compare_outputs", "ModelFigures", "measure_pair"]
