# Two commands do all the set-up: `make demo` (install, then train MS-Mix on the built-in benchmark)
# and `make test` (install, then run the test suite). Everything goes into ./.venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: install demo test bench clean

# The package and matplotlib (curves.png, ablation.png): all `make demo` needs.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pinned first: the CPU wheel. An unpinned torch would pull several GB of CUDA packages.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[plot]"
	touch $(STAMP)

# What the tests need on top (pytest, hypothesis, scipy, transformers): only `make test` and `make install` get it.
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,plot]"
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/msmix train

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) build *.egg-info
