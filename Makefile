# The two commands a newcomer needs: `make run` and `make test`.
# Each creates .venv on first use and installs jdl (editable) with its test extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/jdl claims --quick --out runs/claims

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[test,bench]"

clean:
	rm -rf $(VENV) runs .pytest_cache
