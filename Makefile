# Quick start: `make demo` runs the local demo, `make test` runs the whole test suite.
# Both create .venv and install tidal with the pinned versions in constraints.txt first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint protos clean compose-smoke climate-example

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tidal demo

# The climate worked example (docs/climate.md): writes data/climate/t2m.nc if missing, trains the
# region-partitioned sync and the async station jobs on a local cluster, plots into climate-example/ (docs/climate/ holds the committed run).
climate-example: $(STAMP)
	$(BIN)/tidal climate example --out climate-example  # docs/climate/ holds the committed run: not overwritten

test: $(STAMP)
	scripts/ensure-test-deps.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Builds the image with no registry and runs docker-compose.yml on the host network (root,
# minutes; not part of `make test`): see deploy/SMOKE.md.
compose-smoke: $(STAMP)
	PYTHON=$(BIN)/python scripts/compose-smoke.sh

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
