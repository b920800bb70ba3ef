# The two commands of the README. Both create .venv on first use; `pip install torch==2.13.0`
# takes the CPU build (a looser pin would pull a multi-GB CUDA build).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup clean

$(BIN)/maskdiff: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/maskdiff

setup: $(BIN)/maskdiff

demo: setup
	$(BIN)/maskdiff compare --preset demo

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
