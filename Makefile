# mnist-serve: `make run` sets up and serves, `make test` sets up and runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= mnist_cnn.pt
PYTEST_ARGS ?=

.PHONY: install model run test test-quick test-reliability lint format proto docs docs-serve bench-train bench-serve bench-v2 mutation gpu-wheels gpu-data gpu-rehearsal clean

install: $(VENV)/.installed

# Reinstall when the dependencies change; pip takes torch from the pinned wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Train the default model once; later runs reuse it.
model: install
	@if [ -f "$(MODEL)" ]; then echo "$(MODEL) exists; delete it to retrain"; \
	else $(PY) -m training --out "$(MODEL)"; fi

# Serve as in production: MNIST_HOST, MNIST_PORT, MNIST_WORKERS and the other MNIST_* settings apply.
run: model
	MNIST_MODEL_PATH="$(MODEL)" $(PY) -m app

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The v2 protocol's gRPC modules, from its proto (shipped generated; a unit test checks they match).
proto: install
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. app/v2/grpc_predict_v2.proto

# The documentation site (docs/, mkdocs.yml) into site/: strict, so a broken link, a missing page or a
# generated section that fails stops the build. `docs-serve` rebuilds it on every edit.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr 127.0.0.1:8008

# The whole suite (slow training and end-to-end tests included), except tests that need a GPU.
test: lint docs
	$(PY) -m pytest -m "not gpu" --durations=20 $(PYTEST_ARGS)

# The reliability suite, long (RELIABILITY=long): fuzzing with more examples, a longer soak, more
# slow clients. `make test` runs it short.
test-reliability: install
	RELIABILITY=long $(PY) -m pytest -m "reliability and not gpu" -s $(PYTEST_ARGS)

# The inner loop, in-process only: no full training run and no server, training or browser process
# (only tests/unit and tests/api are collected: the other folders' imports alone take seconds).
# The quick checkpoints are trained once per version of the training code, then reused.
test-quick: install
	TEST_CHECKPOINT_CACHE="$${TEST_CHECKPOINT_CACHE:-$(abspath .pytest_cache/checkpoints)}" \
	  $(PY) -m pytest -m "not slow and not gpu" tests/unit tests/api $(PYTEST_ARGS)

# Mutation testing (mutmut) of the batching engine, preprocessing, uploads, the checkpoint format
# and the job store against the fast tests; prints the score and the surviving mutants. Resumes
# where an interrupted run stopped, checking survivors again; `rm -rf mutants` starts over. Hours
# on 2 cores.
mutation: install
	$(PY) -m pip install -q -e ".[mutation]"
	$(PY) scripts/mutation_report.py --forget-survivors
	@# mutmut maps tests to the functions they reach once, then only adds new tests to the map: a
	@# function split or renamed since would be reached by none of the old ones. Map afresh.
	rm -f mutants/mutmut-stats.json
	MNIST_DATA_DIR="$${MNIST_DATA_DIR:-$(abspath ../shared/mnist)}" TEST_CHECKPOINT_CACHE="$(abspath mutants/checkpoints)" \
	  $(VENV)/bin/mutmut run --max-children $$(nproc)
	$(PY) scripts/mutation_report.py

bench-train: install
	$(PY) -m bench.train_speed

# Needs wrk (Debian: apt-get install wrk); LitServe comes from the bench extra.
bench-serve: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m bench.serve_load

# Needs wrk: v2 binary tensors against /predict and the model alone.
bench-v2: install
	$(PY) -m bench.v2_load

# The GPU check (bench/gpu_check.sh) runs on a machine with its own Python 3.12 and PyTorch and no
# network: it takes our other runtime packages as wheels from .whl/ and MNIST from ./data.
gpu-wheels:
	bash scripts/gpu_wheels.sh

gpu-data:
	mkdir -p data
	for f in "$${MNIST_DATA_DIR:-../shared/mnist}"/*-ubyte*; do [ -e "data/$${f##*/}" ] || cp "$$f" data/; done
	@du -sh data

# The GPU check on the CPU, as that machine would run it: Python 3.12 with the PyTorch it has
# (2.11) and what it ships beside it (numpy, pillow, httpx, click, uvloop, pytest), plus the carried wheels.
GPU_VENV ?= .venv-gpu
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))

$(GPU_VENV)/.installed:
	@test -n "$(PYTHON312)" || { echo "gpu-rehearsal needs python3.12 (set PYTHON312)"; exit 1; }
	$(PYTHON312) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install -q --no-deps torch==2.11.0 torchvision==0.26.0
	$(GPU_VENV)/bin/pip install -q filelock sympy networkx jinja2 fsspec numpy pillow httpx click uvloop pytest \
	  nvidia-cudnn-cu13 nvidia-nccl-cu13 nvidia-nvshmem-cu13 nvidia-cusparselt-cu13 cuda-bindings \
	  "cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]"
	touch $@

gpu-rehearsal: gpu-wheels gpu-data $(GPU_VENV)/.installed
	GPU_CHECK_ALLOW_CPU=1 PYTHON=$(GPU_VENV)/bin/python bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) $(GPU_VENV) mutants site .whl .pytest_cache .mypy_cache .ruff_cache *.egg-info
