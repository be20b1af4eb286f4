# pipeline — every command a newcomer needs. `make demo` and `make test` set themselves up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SOURCES := pipeline tests examples $(wildcard benchmarks)

.PHONY: install demo test test-fast lint typecheck format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("pipeline needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall --quiet --yes pipeline 2>/dev/null || true  # the distribution's old name
	$(BIN)/python -m pip install --quiet -e '.[dev,emulators]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install pipeline with its dev tools

demo: $(STAMP)  ## run specs/quickstart.yaml on the built-in emulators
	$(BIN)/pipeline run specs/quickstart.yaml

test: $(STAMP)  ## the whole suite (unit, end-to-end on loopback, crash tests)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

format: $(STAMP)
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)  ## performance harness (not part of `make test`); appends to benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
