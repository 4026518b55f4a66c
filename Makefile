# ModelPromotion operator: promote an MLflow run to Seldon Core when its metrics pass the gates.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

help: ## show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install pinned dependencies (constraints.txt)

demo: $(STAMP) ## the whole flow on devstack: train, promote, reject; prints what to type next
	$(PY) -m devstack demo

up: $(STAMP) ## start devstack (etcd, kube-apiserver, S3, MLflow); builds the binaries once
	$(PY) -m devstack up

down: ## stop devstack and everything it started
	@test -x $(PY) && $(PY) -m devstack down || true

test: $(STAMP) ## unit + integration tests (integration on a devstack of their own)
	$(PY) -m pytest tests/unit tests/integration

test-unit: $(STAMP) ## pure tests, no network
	$(PY) -m pytest tests/unit

test-e2e: $(STAMP) ## kind end-to-end tests (needs Docker and kind)
	$(PY) -m pytest tests/e2e

crds: $(STAMP) ## regenerate crds/ from operator/promoter/spec.py
	cd operator && ../$(PY) -m promoter.crdgen > ../crds/modelpromotions.mlops.dev.yaml

run: $(STAMP) ## run the operator against the current kube context (all namespaces)
	cd operator && ../$(VENV)/bin/kopf run -m promoter.handlers --standalone --all-namespaces

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check operator devstack tests experiments
	$(VENV)/bin/mypy

.PHONY: help install demo up down test test-unit test-e2e crds run lint
