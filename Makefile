# Set-up on a fresh machine: `make run` (train and write runs/latest/submission.csv) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := data/digit-recognizer
PROFILE ?= default

.PHONY: run test install data compile images serve bench bench-env kaggle-submit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# TensorFlow with CUDA where `nvidia-smi -L` lists a GPU, the CPU-only wheel otherwise; GPU=1 or GPU=0 decides instead.
# The marker names the variant: a second make reinstalls nothing, a change of GPU swaps the wheel in the same venv.
GPU ?= $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo 1 || echo 0)
TENSORFLOW := $(if $(filter 1,$(GPU)),gpu,cpu)
OTHER_TENSORFLOW_WHEEL := $(if $(filter 1,$(GPU)),tensorflow-cpu,tensorflow)

$(VENV)/.installed-$(TENSORFLOW): pyproject.toml | $(BIN)/python
	@if ls $(VENV)/.installed-* >/dev/null 2>&1; then $(BIN)/pip uninstall --quiet -y $(OTHER_TENSORFLOW_WHEEL); rm -f $(VENV)/.installed-*; fi
	$(BIN)/pip install --quiet -e '.[pipeline,$(TENSORFLOW),serve,test]'
	touch $@

install: $(VENV)/.installed-$(TENSORFLOW)

# Kaggle's files: already here, or fetched with the Kaggle CLI (components/download.py says what it needs).
data: install
	@if [ -f $(DATA)/train.csv ] && [ -f $(DATA)/test.csv ]; then exit 0; fi; \
	echo "$(DATA)/train.csv and test.csv are missing: fetching them with the Kaggle CLI (or put Kaggle's files there:" \
		"https://www.kaggle.com/competitions/digit-recognizer/data, after accepting the competition's rules)"; \
	$(BIN)/python -m components.download --out $(DATA)

run: install data
	$(BIN)/python pipeline.py run --data $(DATA) --profile $(PROFILE)

test: install
	$(BIN)/python -m pytest

compile: install
	$(BIN)/python pipeline.py compile

# TENSORFLOW=gpu (tensorflow[and-cuda]) or cpu; IMAGE_PREFIX (e.g. ghcr.io/me/) and TAG name the images.
TENSORFLOW ?= gpu
IMAGE_PREFIX ?=
TAG ?= latest
images:
	docker build -f Dockerfile.train --build-arg TENSORFLOW=$(TENSORFLOW) -t $(IMAGE_PREFIX)digit-recognizer-train:$(TAG) .
	docker build -f Dockerfile.serve -t $(IMAGE_PREFIX)digit-recognizer-serve:$(TAG) .

MODEL ?= runs/latest/model.onnx
serve: install
	@test -f $(MODEL) || { echo "error: $(MODEL) not found: run make run first, or make serve MODEL=path/to/model.onnx"; exit 1; }
	$(BIN)/python -m serving --model $(MODEL)

# The benchmarks' peer, KServe, lives in its own environment; wrk is Debian's load generator.
bench-env: .venv-kserve/.installed
.venv-kserve/.installed:
	$(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/pip install --quiet kserve==0.21.0 onnxruntime==1.32.0
	touch $@

bench: install bench-env
	@command -v wrk >/dev/null || { echo "error: wrk is missing: apt-get install wrk"; exit 1; }
	@test -f runs/latest/model.int8.onnx || { echo "error: runs/latest has no model: run make run first"; exit 1; }
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_serving.py

SUBMISSION ?= runs/latest/submission.csv
kaggle-submit: install
	@test -f $(SUBMISSION) || { echo "error: $(SUBMISSION) not found: run make run first"; exit 1; }
	@$(BIN)/python -c "import sys; from components.download import NO_CREDENTIALS, has_credentials; \
		sys.exit(None if has_credentials() else 'error: ' + NO_CREDENTIALS)"
	$(BIN)/kaggle competitions submit -c digit-recognizer -f $(SUBMISSION) -m "$${MESSAGE:-digit-recognizer pipeline $$(readlink runs/latest)}"

clean:
	rm -rf $(VENV) .venv-kserve runs digit_recognizer_pipeline.yaml
