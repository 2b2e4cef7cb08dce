# One command for the tests and one for the demo, each sets up .venv on its own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-all lint format demo bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: these wheels come from the machine's disk; a newer torch downloads gigabytes.
	# The venv takes about 6 GB (torch's CUDA build); no pip cache, so nothing is stored twice.
	$(BIN)/pip install -q --no-cache-dir torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --no-cache-dir -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

# ruff: the linter and the formatter, as configured in pyproject.toml. CI runs this before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# DIM(L) and SimCLR on Fashion-MNIST (digits when it is not on the machine), ~5 minutes: configs/demo.yaml.
demo: $(STAMP)
	$(BIN)/dim-ssl compare demo output_dir=runs/demo --overwrite

bench: $(STAMP)
	$(BIN)/dim-ssl bench

clean:
	rm -rf $(VENV) runs
