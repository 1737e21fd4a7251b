# Targets people and CI both use. `make run` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test venv services browser lint bench bench-smoke clean

$(BIN)/hitl-workers: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,browser]'
	@touch $@

venv: $(BIN)/hitl-workers

## The whole system on this machine (SQLite + local Redis), the simulator, then Ctrl-C to stop.
run: venv
	$(BIN)/hitl-workers run

## The test suite against real PostgreSQL, Redis, worker processes and headless Chromium.
test: venv services browser
	$(BIN)/pytest $(PYTEST_ARGS)

## Start (or install) PostgreSQL and Redis when they are not running.
services:
	.ci/services

## Debian's Chromium for the browser tests (Playwright drives it; no browser download).
browser:
	.ci/browser

## ruff over the whole tree, mypy over the package (strict where pyproject.toml says).
lint: venv
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
