# xwhep developer tasks.
#
# On a fresh Debian machine you need python3 with venv support and make:
#     apt-get install python3-venv make
# `make test-pg` additionally needs the PostgreSQL server binaries:
#     apt-get install postgresql
# (.ci/run installs all of these.)
#
# Everything runs from the project virtualenv in .venv, created on demand by
# the internal `venv` target; the editable install is redone only when
# pyproject.toml is newer than the stamp file .venv/.installed.
#
# Note: make exits with status 2 whenever a recipe fails, so a failing pytest
# (including exit code 5, "no tests collected") makes `make test` fail.

PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed
PYTEST_ARGS ?=
GRID_DIR   ?= grid

.DEFAULT_GOAL := help

.PHONY: help venv test test-pg lint format typecheck run clean distclean

help:
	@echo "make test       run the test suite (SQLite); PYTEST_ARGS='...' is passed to pytest"
	@echo "make test-pg    run the test suite against a throwaway PostgreSQL (scripts/pg-test-server)"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make format     ruff format + ruff check --fix"
	@echo "make typecheck  mypy (strict, configured in pyproject.toml)"
	@echo "make run        run a local grid in ./$(GRID_DIR) and a first sweep of 100 jobs"
	@echo "make bench      run every benchmark (~20 min) and rewrite docs/BENCHMARKS.md"
	@echo "make bench-quick  every benchmark with tiny sizes (CI); report in a temp dir, docs untouched"
	@echo "make clean      remove caches and build artefacts (distclean: also .venv)"

# ---------------------------------------------------------------------------
# virtualenv (internal)

venv: $(STAMP)

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { \
	    rm -rf $(VENV); \
	    echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu run: apt-get install python3-venv" >&2; \
	    exit 1; }

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

# ---------------------------------------------------------------------------
# checks

test: venv
	$(BIN)/pytest $(PYTEST_ARGS)

# The suite runs with XW_TEST_DATABASE_URL pointing at a private cluster that is
# started for this run only and deleted afterwards.
test-pg: venv
	./scripts/pg-test-server -- $(BIN)/pytest $(PYTEST_ARGS)

# Runs both checks and fails if either fails.
lint: venv
	@rc=0; \
	echo "+ ruff check ."; $(BIN)/ruff check . || rc=1; \
	echo "+ ruff format --check ."; $(BIN)/ruff format --check . || rc=1; \
	exit $$rc

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy

# ---------------------------------------------------------------------------
# local grid

# Jobs run in bubblewrap: scripts/ensure-sandbox installs it (root with apt) or stops with the command.
run: venv
	@./scripts/ensure-sandbox
	$(BIN)/xwgrid up --dir $(GRID_DIR) --demo

# ---------------------------------------------------------------------------
# benchmarks (bench/, docs/BENCHMARKS.md): not tests, no thresholds; a crash fails the target.
# PostgreSQL figures need the server binaries; without them those rows say "not measured".

.PHONY: bench bench-quick
BENCH_PG := $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),./scripts/pg-test-server --,)

bench: venv
	$(BENCH_PG) $(BIN)/python -m bench.run

bench-quick: venv
	$(BENCH_PG) $(BIN)/python -m bench.run --quick

# ---------------------------------------------------------------------------
# housekeeping

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
