# mnist-serve: `make run` sets up and serves, `make test` sets up and runs every check.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= mnist_cnn.pt
PYTEST_ARGS ?=

.PHONY: install model run test test-quick lint format bench-train bench-serve clean

install: $(VENV)/.installed

# Reinstall when the dependencies change; pip takes torch from the pinned wheels.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Train the tutorial's model once; later runs reuse it.
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

# The whole suite (slow training and end-to-end tests included), except tests that need a GPU.
test: lint
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

# The inner loop: skips full training runs.
test-quick: install
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

bench-train: install
	$(PY) -m bench.train_speed

# Needs wrk (Debian: apt-get install wrk); LitServe comes from the bench extra.
bench-serve: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m bench.serve_load

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
