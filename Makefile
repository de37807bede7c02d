# tunefleet: the two commands a newcomer needs, and the checks CI runs.
#   make quickstart   set up .venv and run the quickstart study locally (no cluster, no database server)
#   make test         set up .venv, make sure PostgreSQL is installed, run every test tier

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: quickstart test lint typecheck check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch==2.13.0 is the CPU build these machines carry; an unpinned torch would pull CUDA.
	$(BIN)/python -m pip install --quiet -e '.[examples,test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/tunefleet run examples/quickstart/study.yaml --out tunefleet-out/quickstart

test: $(STAMP)
	bash scripts/ensure-system-deps.sh
	bash scripts/run-tests.sh

lint: $(STAMP)
	$(BIN)/ruff check controller trial_worker tests bench scripts

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .tunefleet tunefleet-out
