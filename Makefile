# Agent World: the two commands a new user needs are `make testnet` and `make test`.
# Both create the virtual environment from pyproject.toml when it is missing or stale.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODES    ?= 4
DURATION ?=
TESTNET_ARGS := --nodes $(NODES) $(if $(DURATION),--duration $(DURATION),)

.PHONY: venv testnet test bench clean sim sim-long

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

# Cluster simulator (agent_world_node/sim). `make sim SEED=42` replays one scenario with its
# per-height trace and verdict; a failing test prints the exact command, with SIM_ARGS.
# `make sim-long MINUTES=30 JOBS=2` runs random scenarios until the time is up.
MINUTES ?= 10
JOBS    ?= 2
sim: $(STAMP)
	@test -n "$(SEED)" || { echo "usage: make sim SEED=<seed> [SIM_ARGS=\"--stakes 1,2,3,4 --byzantine 0:twins ...\"]"; exit 2; }
	$(BIN)/python -m agent_world_node.sim --seed $(SEED) $(SIM_ARGS)

sim-long: $(STAMP)
	$(BIN)/python -m agent_world_node.sim --minutes $(MINUTES) --jobs $(JOBS) $(if $(SEED),--seed $(SEED),) $(SIM_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
