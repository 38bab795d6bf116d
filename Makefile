# ScipionCloud front door. Logic lives in the Python CLIs (scipioncloud, scipioncloud-agent) and tools/;
# this file only names the jobs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

IMAGE   ?= scipion-desktop
REGION  ?=
COPY_TO ?=
HOSTS   ?=
VARS    ?=
PYTEST_ARGS ?=
comma := ,
AMI_REGIONS = $(if $(REGION),--region $(REGION)) $(foreach r,$(COPY_TO),--copy-to $(r))

.PHONY: help setup deps test test-gpu lint bench agent ami versions validate rehearse provision docs clean

help: ## List every target
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

setup: $(STAMP) ## Make .venv (project + test extras), .venv-scipion (pyworkflow) and .venv-pcluster (idempotent)
	$(PY) -m tests.support.cluster_venvs

deps: ## Install the Debian packages the tests use (apt-get; only what is missing)
	@tools/apt-deps tools/apt-packages.txt

test: deps setup lint ## Install what the tests need, lint (as CI), then run the whole suite
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-gpu: setup ## Run the GPU checks against a real NVIDIA driver (skips without one)
	$(VENV)/bin/pytest -m gpu -p no:cacheprovider tests/gpu $(PYTEST_ARGS)

lint: $(STAMP) ## ruff, packer fmt/validate, ansible syntax check and ansible-lint
	$(VENV)/bin/ruff check agent scipioncloud tests bench
	$(VENV)/bin/ruff format --check agent scipioncloud tests bench
	@tools/lint-infra

bench: deps setup ## Run the benchmarks; prints ratios against reference tools
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

agent: $(STAMP) ## Run the agent in the foreground on 127.0.0.1 with a development config
	@tools/dev-agent

ami: $(STAMP) ## Bake an AMI: make ami [IMAGE=scipion-desktop] [REGION=eu-west-1] [COPY_TO="us-east-1 ..."]
	@# credentials first: without an AWS account nothing gets installed (make rehearse needs none)
	@$(VENV)/bin/scipioncloud bake $(IMAGE) --check-aws $(AMI_REGIONS)
	@command -v packer >/dev/null || tools/install-packer
	$(VENV)/bin/scipioncloud bake $(IMAGE) $(AMI_REGIONS)

versions: $(STAMP) ## Regenerate docs/versions.md (the pinned-versions table) from images/ and role defaults
	$(PY) -m scipioncloud.versions > docs/versions.md

validate: $(STAMP) ## Validate every image definition offline (packer validate, ansible syntax)
	$(VENV)/bin/scipioncloud bake --validate-only --all

rehearse: deps setup ## Rehearse the whole bake offline (moto, debootstrap root filesystem, Packer, Ansible)
	$(VENV)/bin/pytest -m rehearsal tests/bake $(PYTEST_ARGS)

provision: $(STAMP) ## Apply the roles to existing machines: make provision HOSTS=a,b [IMAGE=...] [VARS=file.yml]
	@test -n "$(HOSTS)" || { echo "usage: make provision HOSTS=host1,host2 [IMAGE=scipion-desktop]"; exit 2; }
	$(VENV)/bin/scipioncloud provision $(subst $(comma), ,$(HOSTS)) --image $(IMAGE) $(foreach v,$(VARS),--vars-file $(v))

clean: ## Remove the virtualenv, build outputs and caches
	rm -rf $(VENV) .venv-scipion .venv-pcluster build .pytest_cache .ruff_cache *.egg-info
