# Targets people and CI both use. `make run` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# `make run GATEWAY_PORT=8001 FLOWER_PORT=5556` (or HITL_GATEWAY_PORT / HITL_FLOWER_PORT)
GATEWAY_PORT ?= $(or $(HITL_GATEWAY_PORT),8000)
FLOWER_PORT ?= $(or $(HITL_FLOWER_PORT),5555)

# The test tiers, by directory (tests/unit/test_test_tiers.py checks each directory is in one).
UNIT_TESTS := tests/unit
INTEGRATION_TESTS := tests/integration
ACCEPTANCE_TESTS := tests/acceptance tests/gateway tests/operators tests/browser tests/rabbitmq tests/clients
FAULT_TESTS := tests/faults tests/scaleout

.PHONY: run test test-unit test-integration test-acceptance test-faults venv dev-venv services \
	browser lint bench bench-smoke clean

# The package and its dev tools (pytest, ruff, mypy): all the unit tier and lint need.
$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# Everything, the browser tests' Playwright too.
$(BIN)/hitl-workers: $(VENV)/.dev
	$(BIN)/pip install --quiet -e '.[dev,browser]'
	@touch $@

dev-venv: $(VENV)/.dev
venv: $(BIN)/hitl-workers

## The whole system on this machine (SQLite + local Redis), the simulator, then Ctrl-C to stop.
run: venv
	$(BIN)/hitl-workers run --gateway-port $(GATEWAY_PORT) --flower-port $(FLOWER_PORT)

## The test suite against real PostgreSQL, Redis, worker processes and headless Chromium.
test: venv services browser
	$(BIN)/pytest $(PYTEST_ARGS)

## Pure rules only: seconds, no services, no browser (nothing is started or installed).
test-unit: dev-venv
	$(BIN)/pytest $(UNIT_TESTS) $(PYTEST_ARGS)

## The database's invariants and real concurrent transactions (PostgreSQL, Redis).
test-integration: dev-venv services
	$(BIN)/pytest $(INTEGRATION_TESTS) $(PYTEST_ARGS)

## Real worker processes: every exit, the gateway, the console, operators' tools, RabbitMQ.
test-acceptance: venv services browser
	$(BIN)/pytest $(ACCEPTANCE_TESTS) $(PYTEST_ARGS)

## Killed workers, a flushed broker, restarted PostgreSQL, hosts lost under load (minutes).
test-faults: dev-venv services
	$(BIN)/pytest $(FAULT_TESTS) $(PYTEST_ARGS)

## Start (or install) PostgreSQL and Redis when they are not running.
services:
	.ci/services

## Debian's Chromium for the browser tests (Playwright drives it; no browser download).
browser:
	.ci/browser

## ruff over the whole tree, mypy over the package (strict where pyproject.toml says).
lint: dev-venv
	$(BIN)/ruff check .
	$(BIN)/mypy

## The benchmarks (minutes; figures go to docs/benchmarks.md).
bench: venv services
	$(BIN)/python -m bench.claimed_throughput

## A short run of the benchmark script, so CI knows it still works (its figures mean nothing).
bench-smoke: venv services
	$(BIN)/python -m bench.claimed_throughput --steps 100 --samples 20

clean:
	rm -rf $(VENV) run test-artifacts hitl_workers.db*
