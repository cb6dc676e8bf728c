# medchain developer entry points. `make demo` and `make test` are all a newcomer needs.

SHELL := /bin/bash
.DEFAULT_GOAL := help

BOOT_PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
SEEDS       ?= 200
SCENARIO_SEED ?= 1
BENCH_ARGS  ?= --nodes 4
PYTEST_ARGS ?=

.PHONY: help venv demo test test-unit test-integration lint format sim bench scenarios clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install medchain with its dev extras (again only when pyproject.toml changes)

$(STAMP): pyproject.toml
	@if [ -z "$(BOOT_PYTHON)" ]; then echo "need python3.11 or python3 on PATH" >&2; exit 1; fi
	@test -x $(PY) || $(BOOT_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: venv ## start a 4-node cluster, commit a few hundred records, show every node agrees, stop it
	$(PY) -m scripts.demo

test: venv lint ## lint, then run the whole test suite (unit, sim, integration)
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv ## run only the fast tests (no node processes)
	$(PY) -m pytest -m 'not integration' $(PYTEST_ARGS)

test-integration: venv ## run only the tests that start real node processes
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

bench: venv ## measure throughput and latency on a fresh local cluster: make bench BENCH_ARGS='...'
	$(PY) -m node.cli bench $(BENCH_ARGS)

scenarios: venv ## run every fault scenario in configs/scenarios on a fresh local cluster
	$(PY) -m node.cli scenario run configs/scenarios/*.toml --seed $(SCENARIO_SEED) --out .medchain/scenarios

clean: ## remove caches, build output and the default local cluster (stopping it first)
	@if [ -x $(PY) ] && [ -d .medchain/cluster ]; then $(PY) -m node.cli cluster down --dir .medchain/cluster || true; fi
	rm -rf .medchain .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
