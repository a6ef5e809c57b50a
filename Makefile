# Two entry points: `make demo` (the main job end to end) and `make test` (the test suite).
# Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint typecheck install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: a plain `torch` requirement on a fresh venv would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,mlflow,exchange,lightgbm]"
	touch $@

install: $(VENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check kallos_models tests bench
	$(VENV)/bin/ruff format --check kallos_models tests bench

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy kallos_models

test: lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider

demo: $(VENV)/.installed
	$(VENV)/bin/kallos-run demo --workdir demo
