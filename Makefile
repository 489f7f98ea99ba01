# desi-qad: `make demo` runs the pipeline on the embedded demo release; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The CPU build of torch; a CUDA node installs its own build before `make setup`.
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-fast lint bench ui clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/qad demo

test: setup lint
	$(BIN)/python -m pytest

# The inner loop: the unit tests, without the pipeline runs, services, browser and deployment checks.
test-fast: setup lint
	$(BIN)/python -m pytest -m "not slow and not postgres and not browser and not deployment"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_raw_spectra.py

ui: setup
	$(BIN)/qad ui

clean:
	rm -rf $(VENV) storage .pytest_cache .ruff_cache
