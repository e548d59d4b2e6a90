# The two set-up commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bulkdrive tests benchmarks
	$(BIN)/mypy --strict bulkdrive

test: lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/python benchmarks/make_sample_tree.py demo-data/sample
	$(BIN)/bulkdrive upload demo-data/sample --data-dir demo-data/emulator

bench: $(STAMP)
	$(BIN)/python benchmarks/emulator_ingest.py

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache
