# Set-up on a fresh machine: `make run` (train and write runs/latest/submission.csv) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := data/digit-recognizer
PROFILE ?= default

.PHONY: run test lint install data compile images image-prefix push serve mlflow bench bench-env kaggle-submit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# uv installs the packages, several times faster than pip (docs/BENCHMARKS.md#make-run); a venv made before it gets it.
$(BIN)/uv: | $(BIN)/python
	$(BIN)/pip install --quiet uv==0.13.9

# TensorFlow with CUDA where `nvidia-smi -L` lists a GPU, the CPU-only wheel otherwise; GPU=1 or GPU=0 decides instead.
# The marker names the variant: a second make reinstalls nothing, a change of GPU swaps the wheel in the same venv.
GPU ?= $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo 1 || echo 0)
VENV_TENSORFLOW := $(if $(filter 1,$(GPU)),gpu,cpu)
OTHER_TENSORFLOW_WHEEL := $(if $(filter 1,$(GPU)),tensorflow-cpu,tensorflow)

# --compile-bytecode: uv writes no .pyc files (pip does), so each step's process compiled TensorFlow's Python
# again wherever Python may not write them (PYTHONDONTWRITEBYTECODE): 9 s an import of TensorFlow, not 4.
$(VENV)/.installed-$(VENV_TENSORFLOW): pyproject.toml | $(BIN)/uv
	@if ls $(VENV)/.installed-* >/dev/null 2>&1; then $(BIN)/uv pip uninstall --python $(BIN)/python --quiet $(OTHER_TENSORFLOW_WHEEL); rm -f $(VENV)/.installed-*; fi
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -e '.[pipeline,tracking,$(VENV_TENSORFLOW),serve,test]'
	touch $@

install: $(VENV)/.installed-$(VENV_TENSORFLOW)

# Kaggle's files: already here, or fetched with the Kaggle CLI (components/download.py says what it needs).
data: install
	@if [ -f $(DATA)/train.csv ] && [ -f $(DATA)/test.csv ]; then exit 0; fi; \
	echo "$(DATA)/train.csv and test.csv are missing: fetching them with the Kaggle CLI (or put Kaggle's files there:" \
		"https://www.kaggle.com/competitions/digit-recognizer/data, after accepting the competition's rules)"; \
	$(BIN)/python -m components.download --out $(DATA)

run: install data
	$(BIN)/python pipeline.py run --data $(DATA) --profile $(PROFILE)

# The linter and the formatter's check first: a style slip fails in seconds, not after the tests.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

compile: install
	$(BIN)/python pipeline.py compile

# The training image's TensorFlow, whatever this machine has: gpu (tensorflow[and-cuda], for the cluster's GPU nodes)
# or cpu (smaller, for a laptop). IMAGE_PREFIX (e.g. ghcr.io/me/) and TAG name the images; push sends them there.
TRAIN_IMAGE ?= gpu
IMAGE_PREFIX ?=
TAG ?= latest
IMAGES := $(IMAGE_PREFIX)digit-recognizer-train:$(TAG) $(IMAGE_PREFIX)digit-recognizer-serve:$(TAG)
image-prefix:
	@test -n "$(IMAGE_PREFIX)" || { echo "error: set IMAGE_PREFIX to the registry to push to, e.g. make push IMAGE_PREFIX=ghcr.io/me/ TAG=v1"; exit 1; }

images:
	@case "$(TRAIN_IMAGE)" in gpu|cpu) ;; *) echo "error: TRAIN_IMAGE=$(TRAIN_IMAGE): expected gpu or cpu"; exit 1;; esac
	docker build -f Dockerfile.train --build-arg TENSORFLOW=$(TRAIN_IMAGE) -t $(word 1,$(IMAGES)) .
	docker build -f Dockerfile.serve -t $(word 2,$(IMAGES)) .

push: image-prefix images
	docker push $(word 1,$(IMAGES))
	docker push $(word 2,$(IMAGES))

MODEL ?= runs/latest/model.onnx
serve: install
	@test -f $(MODEL) || { echo "error: $(MODEL) not found: run make run first, or make serve MODEL=path/to/model.onnx"; exit 1; }
	$(BIN)/python -m serving --model $(MODEL)

# MLflow's UI over the local runs' embedded store (runs/mlflow.db, each run's MLflow runs and registered model).
MLFLOW_PORT ?= 5000
mlflow: install
	@test -f runs/mlflow.db || { echo "error: runs/mlflow.db not found: make run tracks a run there"; exit 1; }
	$(BIN)/mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# The benchmarks' peer, KServe, lives in its own environment (the client tests use its clients too); wrk (HTTP) and
# h2load (gRPC, in nghttp2-client) are Debian's load generators.
bench-env: .venv-kserve/.installed
.venv-kserve/.installed:
	$(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/pip install --quiet kserve==0.21.0 onnxruntime==1.32.0
	touch $@

bench: install bench-env
	@command -v wrk >/dev/null || { echo "error: wrk is missing: apt-get install wrk"; exit 1; }
	@command -v h2load >/dev/null || { echo "error: h2load is missing: apt-get install nghttp2-client"; exit 1; }
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
