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
	$(BIN)/ruff format --check bulkdrive tests benchmarks
	$(BIN)/mypy --strict bulkdrive

# One worker per core; a test file stays on one worker (module-scoped servers and clusters).
test: lint
	$(BIN)/pytest -q -n auto --dist loadfile

# `make demo SRC=path/to/tree` uploads your own tree instead of the generated sample; each
# source has its own resume journal under demo-data/state.
SRC ?= demo-data/sample
demo: $(STAMP)
	@test "$(SRC)" != demo-data/sample || $(BIN)/python -m bulkdrive.bench.workloads sample demo-data/sample >/dev/null
	BULKDRIVE_STATE_DIR="$(CURDIR)/demo-data/state" $(BIN)/bulkdrive upload "$(SRC)" --data-dir demo-data/emulator

# `make bench ARGS="--workload small --repeat 5"`; see benchmarks/README.md.
bench: $(STAMP)
	$(BIN)/bulkdrive bench $(ARGS)

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache
