# The README's commands. `make help` lists them.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup browser repro estimate test test-paper lint format smoke lab bench bench-avx2 bench-both lock clean-notebooks

help: ## list the commands
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11, 5) <= sys.version_info[:3] < (3, 12))' 2>/dev/null || { \
	  echo "make setup: the pinned requirements need Python 3.11.5 or a later 3.11; found" \
	    "'$$($(PYTHON) --version 2>&1)' at '$$(command -v $(PYTHON))'." \
	    "Install one, or point to it: make setup PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name bloodcells --display-name "Python (bloodcells)"
	touch $(STAMP)

setup: $(STAMP) ## create .venv from requirements.txt and register its Jupyter kernel

browser: ## Debian's chromium + chromium-driver for the browser test (installs with apt if missing)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

repro: setup ## estimate the time on this machine, then run the whole study (default: cpu profile)
	@if [ "$(ESTIMATE)" != "0" ]; then $(BIN)/python -m bloodcells.estimate; fi
	$(BIN)/dvc repro

estimate: setup ## how long `make repro` will train on this machine (calibrates, cached)
	$(BIN)/python -m bloodcells.estimate

lint: setup ## ruff check, ruff format --check, notebooks committed clean
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m bloodcells.notebooks --check notebooks/*.ipynb

format: setup ## ruff format and fix, strip notebook outputs
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/python -m bloodcells.notebooks notebooks/*.ipynb

test: lint browser ## lint, then the whole test suite (unit tests, smoke DAG, browser test)
	$(BIN)/python -m pytest

test-paper: setup ## every stage of the paper profile on the sample at 128/224 px (about 14 min)
	$(BIN)/python -m pytest -m paper -v

smoke: setup ## only the end-to-end smoke run of the DAG on the sample
	$(BIN)/python -m pytest -m "e2e and not paper" -v

bench: setup ## speed and memory: preprocessing, every family's training/inference, stage times (after dvc repro preprocess)
	$(BIN)/python -m bloodcells.bench $(ARGS)

bench-avx2: setup ## make bench as on the reference machine: oneDNN capped to AVX2, 2 cores (reports/bench-avx2.md)
	ONEDNN_MAX_CPU_ISA=AVX2 taskset -c 0,1 $(BIN)/python -m bloodcells.bench --out bench-avx2 $(ARGS)

bench-both: setup ## make bench natively, then capped, then both in one table (reports/bench-side-by-side.md)
	$(BIN)/python -m bloodcells.bench --out bench-native $(ARGS)
	ONEDNN_MAX_CPU_ISA=AVX2 taskset -c 0,1 $(BIN)/python -m bloodcells.bench --out bench-avx2 $(ARGS)
	$(BIN)/python -m bloodcells.bench --side-by-side reports/bench-native.json reports/bench-avx2.json

lab: setup ## JupyterLab on localhost (token on); saves strip outputs
	$(BIN)/jupyter lab --config=jupyter_server_config.py

lock: ## regenerate requirements.txt from requirements.in in a fresh venv
	rm -rf /tmp/bloodcells-lock && $(PYTHON) -m venv /tmp/bloodcells-lock
	/tmp/bloodcells-lock/bin/pip install -r requirements.in
	/tmp/bloodcells-lock/bin/pip freeze --exclude-editable > requirements.txt

clean-notebooks: setup ## strip outputs from notebooks in place
	$(BIN)/python -m bloodcells.notebooks notebooks/*.ipynb
