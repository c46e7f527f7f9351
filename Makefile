# Agent World: the two commands a new user needs are `make testnet` and `make test`.
# Both create the virtual environment from pyproject.toml when it is missing or stale.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODES    ?= 4
DURATION ?=
TESTNET_ARGS := --nodes $(NODES) $(if $(DURATION),--duration $(DURATION),)

.PHONY: venv testnet test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	@touch $(STAMP)

testnet: $(STAMP)
	$(BIN)/awnode testnet $(TESTNET_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
