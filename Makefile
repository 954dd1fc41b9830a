# Two commands on a fresh machine with only Python and make:
#   make up     runs the embedded stack (nats-server, broker, demo agencies)
#   make test   installs what the tests need and runs ruff, mypy and pytest
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STATE  ?= .bridge

.PHONY: up demo test lint typecheck unit chaos bench schemas vectors clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

up: $(VENV)/.installed
	$(BIN)/bridge up --state $(STATE)

demo: $(VENV)/.installed
	$(BIN)/bridge demo --state $(STATE)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check bridge tests
	$(BIN)/ruff format --check bridge tests

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

unit: $(VENV)/.installed-test
	$(BIN)/pytest -n 2 --dist loadscope

test: lint typecheck unit

# Fault injection: SIGKILL each part of a real stack while referrals flow (tests/chaos.py);
# about 15 minutes. CHAOS_ARGS passes options, e.g. CHAOS_ARGS="--messages 1000 --seed 7".
chaos: $(VENV)/.installed-test
	$(BIN)/python tests/chaos.py $(CHAOS_ARGS)

bench: $(VENV)/.installed
	$(BIN)/bridge bench crypto
	$(BIN)/bridge bench nats
	$(BIN)/bridge bench e2e

schemas: $(VENV)/.installed
	$(BIN)/python -m bridge.schemas schemas

vectors: $(VENV)/.installed
	$(BIN)/python tests/assets/make_vectors.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
