# Two commands do all the set-up: `make demo` (install, then train MS-Mix on the built-in benchmark)
# and `make test` (install, then run the test suite). Everything goes into ./.venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Pinned first: the CPU wheel. An unpinned torch would pull several GB of CUDA packages.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test,plot]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/msmix train

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) build *.egg-info
