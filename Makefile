# quantcli developer entry points. Everything runs inside .venv, created on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLE := sample_models/digits_cnn

.PHONY: install demo test test-all lint typecheck check bench bench-all bench-calibration samples golden constraints clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## Quantize the bundled sample CNN with its bundled data and print the report.
demo: $(STAMP)
	mkdir -p out
	$(VENV)/bin/quantcli convert $(SAMPLE)/model.onnx -o out/digits_cnn.int8.onnx \
		--data $(SAMPLE)/calib.npz --eval-data $(SAMPLE)/eval.npz --labels $(SAMPLE)/eval_labels.npy \
		--report out/digits_cnn.report.json --force

## The whole test suite (what CI runs).
test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check quantcli tests bench sample_models
	$(VENV)/bin/ruff format --check quantcli tests bench sample_models

typecheck: $(STAMP)
	$(VENV)/bin/mypy

check: lint typecheck test

bench: $(STAMP)
	$(PY) bench/sample_speed.py

## Calibration methods: quantcli vs onnxruntime calibrators on the zoo (ZOO=dir with ppocrv4_det, minilm_l6).
ZOO ?= bench/zoo
bench-calibration: $(STAMP)
	$(PY) bench/calibration.py --zoo $(ZOO)

## Every bench script; each rewrites its own section of bench/RESULTS.md.
bench-all: bench bench-calibration

## Rebuild sample_models/ in a separate venv with the pinned CPU torch (never needed by the package).
samples:
	test -x .buildenv/bin/python || $(PYTHON) -m venv .buildenv
	.buildenv/bin/pip install --quiet torch==2.13.0 scikit-learn onnx==1.23.2 onnxruntime==1.32.0 numpy
	.buildenv/bin/python sample_models/build.py

golden: $(STAMP)
	QUANTCLI_REGEN_GOLDEN=1 $(PY) -m pytest tests/test_golden.py

constraints: $(STAMP)
	{ echo "# Exact versions CI and the quick start install (pip install -c constraints.txt). Regenerate with 'make constraints'."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^-e'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
