# The two commands of the README. Both create .venv on first use; `pip install torch==2.13.0`
# takes the CPU build (a looser pin would pull a multi-GB CUDA build).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The second transformers line (4.57, what LLaDA/Dream/LLaDA2 model code targets): its own venv,
# running the tests that must hold on both lines.
TF4 := .venv-tf4
TF4_TESTS ?= tests/test_hf_families.py tests/test_hf.py tests/test_hf_guards.py tests/test_data_tokenizers.py \
	tests/test_hf_checkpoints.py tests/test_cli_hf_flags.py tests/test_loss_conventions.py \
	tests/test_hf_families_peer.py tests/test_hf_blocks.py tests/test_hf_dpo.py

.PHONY: demo test test-tf4 setup clean

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
	$(MAKE) test-tf4

$(TF4)/bin/pytest: pyproject.toml
	$(PY) -m venv $(TF4)
	$(TF4)/bin/pip install -q --upgrade pip
	$(TF4)/bin/pip install -q torch==2.13.0
	$(TF4)/bin/pip install -q -e . transformers==4.57.6 tokenizers==0.22.2 peft==0.21.2 \
		accelerate==1.15.0 'pytest>=7.4'
	touch $@

test-tf4: $(TF4)/bin/pytest
	$(TF4)/bin/python -m pytest -q $(TF4_TESTS)

clean:
	rm -rf $(VENV) $(TF4) runs
