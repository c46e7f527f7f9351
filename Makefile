# Agent World: the two commands a new user needs are `make testnet` and `make test`.
# Both create the virtual environment from pyproject.toml when it is missing or stale.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODES    ?= 4
DURATION ?=
TESTNET_ARGS := --nodes $(NODES) $(if $(DURATION),--duration $(DURATION),)

.PHONY: venv testnet test check bench clean sim sim-long test-faults toolchains browser compose-test

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	@touch $(STAMP)

# Module build toolchains (agent_world_node/builds): Debian rustc with the wasm32 std, lld and
# bubblewrap (installed with apt-get when missing and run as root; otherwise the command is
# printed). The C toolchain, ziglang, is pinned in pyproject.toml and comes with the venv.
# Idempotent; `make test` and `make testnet` run it.
APT_PKGS := rustc libstd-rust-dev-wasm32 lld bubblewrap
toolchains: $(STAMP)
	@if test -x /usr/bin/rustc && test -d /usr/lib/rustlib/wasm32-unknown-unknown && test -e /usr/bin/rust-lld && test -x /usr/bin/bwrap; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; \
	else echo "module build toolchains missing: sudo apt-get install --no-install-recommends $(APT_PKGS)"; fi

testnet: $(STAMP) toolchains
	$(BIN)/awnode testnet $(TESTNET_ARGS)

# Static checks first (configured in pyproject.toml): lint, types, and the import-layer contracts.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Debian's chromium for the web viewer's browser tests (Playwright drives it; no browser download).
browser:
	@if test -x /usr/bin/chromium; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "chromium missing (the viewer's browser tests skip): sudo apt-get install --no-install-recommends chromium"; fi

test: check toolchains browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP) browser
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

# Fault tests with real processes (tests/test_faults.py): `make test` runs the short scenarios;
# `make test-faults MINUTES=30` runs a random seeded schedule of kills, pauses, partitions and
# 2-of-4 outages for that long (FAULT_SEED=<seed> replays one; figures go to FAULT_REPORT if set).
# MINUTES ?= 5 for this target (the 10 above is sim-long's default; a MINUTES you pass wins).
FAULT_MINUTES := $(if $(filter file,$(origin MINUTES)),5,$(MINUTES))
test-faults: $(STAMP)
	AGENT_WORLD_FAULT_MINUTES=$(FAULT_MINUTES) $(if $(FAULT_SEED),AGENT_WORLD_FAULT_SEED=$(FAULT_SEED),) $(if $(FAULT_REPORT),AGENT_WORLD_FAULT_REPORT=$(FAULT_REPORT),) $(BIN)/python -m pytest -q -s -m faults_long tests/test_faults.py

# The compose project (compose/) run for real: a private Docker engine (installed with apt-get when
# missing, as root), a locally built Python base image, 4 validators, a state-synced full node and
# the workload; checks, then everything torn down and the host's networking reset (compose/test.sh).
COMPOSE_TIMEOUT_S ?= 1200
compose-test: $(STAMP)
	timeout --kill-after=60 $(COMPOSE_TIMEOUT_S) bash compose/test.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
