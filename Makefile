# medchain developer entry points. `make demo` and `make test` are all a newcomer needs.

SHELL := /bin/bash
.DEFAULT_GOAL := help

BOOT_PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
SEEDS       ?= 200
FROM        ?= 100000
JOBS        ?= 2
SCENARIO_SEED ?= 1
SCENARIO_ARGS ?=
BENCH_ARGS  ?= --nodes 4
PYTEST_ARGS ?=
SECONDS     ?= 60

.PHONY: help venv browser-deps demo test test-unit test-integration lint format sim sim-long bench scenarios fuzz clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install medchain with its dev extras (again only when pyproject.toml changes)

$(STAMP): pyproject.toml
	@if [ -z "$(BOOT_PYTHON)" ]; then echo "need python3.11 or python3 on PATH" >&2; exit 1; fi
	@test -x $(PY) || $(BOOT_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

CHROMIUM    := /usr/bin/chromium

browser-deps: ## install Debian's chromium for the browser test (apt-get, as root); else the test skips
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser test (apt-get)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| { echo "browser-deps: apt-get install chromium failed" >&2; [ -z "$$CI" ] || exit 1; }; \
	else echo "browser-deps: no $(CHROMIUM) and not root: the browser test will skip" >&2; fi

demo: venv ## start a 4-node cluster, commit a few hundred records, show every node agrees, stop it
	$(PY) -m scripts.demo

test: venv lint browser-deps ## lint, then run the whole test suite (unit, sim, integration, browser)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv ## run only the fast tests (no node processes)
	$(PY) -m pytest -m 'not integration' $(PYTEST_ARGS)

test-integration: venv browser-deps ## run only the tests that start real node processes
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

lint: venv ## ruff check, ruff format --check, mypy (strict on consensus/)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

sim: venv ## run the seeded simulated-network fault search: make sim SEEDS=N
	$(PY) -m tests.sim.run --seeds $(SEEDS)

sim-long: venv ## long sweep, n = 4 and 7, SEEDS seeds each from FROM on JOBS processes: make sim-long SEEDS=50000 JOBS=2
	$(PY) -m tests.sim.run --seeds $(SEEDS) --from $(FROM) --n 4,7 --jobs $(JOBS)

bench: venv ## measure throughput and latency on a fresh local cluster: make bench BENCH_ARGS='...'
	$(PY) -m scripts.cli bench $(BENCH_ARGS)

scenarios: venv ## every fault scenario at half of the measured peak: make scenarios SCENARIO_ARGS='--load peak'
	$(PY) -m scripts.cli scenario run configs/scenarios/*.toml --seed $(SCENARIO_SEED) --out .medchain/scenarios $(SCENARIO_ARGS)

fuzz: venv ## fuzz the peer frame decoder and every HTTP route, SECONDS each (atheris): make fuzz SECONDS=N
	@mkdir -p .medchain/fuzz
	$(PY) -m tests.fuzz.run peer_frames --seconds $(SECONDS) --work .medchain/fuzz/peer_frames
	$(PY) -m tests.fuzz.run http_routes --seconds $(SECONDS) --work .medchain/fuzz/http_routes

clean: ## remove caches, build output and the default local cluster (stopping it first)
	@if [ -x $(PY) ] && [ -d .medchain/cluster ]; then $(PY) -m scripts.cli cluster down --dir .medchain/cluster || true; fi
	rm -rf .medchain .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
