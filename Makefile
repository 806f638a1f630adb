# Two commands (see README): `make run` runs the toy four-stage experiment, `make test` runs the tests.
# Each sets up .venv on its own (idempotent: pip only installs when setup.py changed).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/toy

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Stamp files record that the install matches the current setup.py.
$(VENV)/.installed-run: setup.py | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: setup.py | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed-run

.PHONY: run sweep test test-all lint
run: $(VENV)/.installed-run
	$(BIN)/python -m s2d_jax.main --config configs/toy_arith.py --workdir $(WORKDIR)

# The toy experiment on three training seeds, summarised across them (runs/toy_seeds/summary.md).
sweep: $(VENV)/.installed-run
	$(BIN)/python -m s2d_jax.main --config configs/toy_arith.py --workdir runs/toy_seeds --seeds 0,1,2

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# CI runs this target; `-m "not slow"` keeps the suite short, `make test-all` runs everything.
test: lint
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: lint
	$(BIN)/python -m pytest -q tests
