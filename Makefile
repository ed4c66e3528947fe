# Quickstart: `make demo` (install into .venv, run the main job on the embedded default)
#             `make test` (install with the test extra, run the whole suite)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# These two releases are served from this machine's disk; a looser pin downloads gigabytes.
TORCH  := torch==2.14.1 torchvision==0.29.1
DEMO   := runs/demo

.PHONY: install install-test demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	touch $@

$(VENV)/.installed: setup.py $(VENV)/.torch
	$(BIN)/pip install --quiet $(TORCH) -e .
	touch $@

$(VENV)/.installed-test: setup.py $(VENV)/.installed
	$(BIN)/pip install --quiet $(TORCH) -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	@mkdir -p $(DEMO)
	$(BIN)/metanet space show
	$(BIN)/metanet space sample --seed 0 --flops 300M > $(DEMO)/arch.json
	@echo "sampled $(DEMO)/arch.json within 90-100% of 300M FLOPs"
	$(BIN)/metanet flops $(DEMO)/arch.json --count
	$(BIN)/metanet build $(DEMO)/arch.json --num-classes 10
	$(BIN)/metanet evaluate $(DEMO)/arch.json --stages zero-cost,amateur,expert,generalist,downstream

test: install-test
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
