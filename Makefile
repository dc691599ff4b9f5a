# rtml: `make demo` sets up and runs the end-to-end demo; `make test` sets up and runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/rtml demo --fresh

test: $(STAMP)
	bash scripts/services.sh
	bash scripts/install-test-tools.sh
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	bash scripts/services.sh
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .rtml
