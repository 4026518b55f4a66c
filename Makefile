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

# The operator's runtime dependencies alone, as the image has them: the benchmarks run the
# operator (the working tree's code) with this interpreter.
OPVENV := .venv-operator
OPSTAMP := $(OPVENV)/.installed
$(OPSTAMP): pyproject.toml constraints.txt
	@test -x $(OPVENV)/bin/python || $(PYTHON) -m venv $(OPVENV)
	$(OPVENV)/bin/python -m pip install -q --upgrade pip
	$(OPVENV)/bin/python -m pip install -q -c constraints.txt .
	@touch $(OPSTAMP)

demo: $(STAMP) ## the whole flow on devstack: train, promote, reject, a challenger against the champion, predict; what next
	$(PY) -m devstack demo

up: $(STAMP) ## start devstack (etcd, kube-apiserver, controller-manager, scheduler, node, Seldon double, S3, MLflow); builds once
	$(PY) -m devstack up

down: ## stop devstack and everything it started
	@test -x $(PY) && $(PY) -m devstack down || true

# Test files run on TEST_WORKERS processes (pytest-xdist), each with a devstack of its own; a
# file's tests stay together. TEST_WORKERS=0 runs them in one process (needed with DEVSTACK_HOME).
TEST_WORKERS ?= 2

test: $(STAMP) ## unit + integration tests + the devstack e2e, on TEST_WORKERS (2) devstacks at once
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests/unit tests/integration tests/e2e/test_devstack.py

test-image: $(STAMP) ## build the operator and trainer images (podman, debootstrap base) and run them against devstack
	$(PY) -m pytest tests/integration/test_image.py

test-unit: $(STAMP) ## pure tests, no network
	$(PY) -m pytest tests/unit

test-faults: $(STAMP) ## the whole fault suite (every crash point and outage; make test runs a subset), ~3 min
	FAULTS_FULL=1 $(PY) -m pytest -m faults tests/integration

# -s: the cluster steps take minutes; their progress shows as it happens.
test-e2e: $(STAMP) ## end-to-end: train, promote the sample, roll out, predict; on devstack, and on kind where Docker is
	$(PY) -m pytest -s tests/e2e

crds: $(STAMP) ## regenerate crds/ (and the chart's copy) from operator/promoter/spec.py
	cd operator && ../$(PY) -m promoter.crdgen > ../crds/modelpromotions.mlops.dev.yaml
	cp crds/modelpromotions.mlops.dev.yaml $(CHART)/crds/

manifests: $(STAMP) ## rewrite the kustomize files that carry the chart's rules (RBAC, egress, admission policy) from charts/.../files/
	$(PY) charts/sync_manifests.py

run: $(STAMP) ## run the operator against the current kube context (all namespaces)
	cd operator && ../$(VENV)/bin/kopf run -m promoter.handlers --standalone --all-namespaces

CHART := charts/mlflow-seldon-promoter

# kubectl from PATH, else the one devstack found or built.
KUBECTL ?= $(or $(shell command -v kubectl 2>/dev/null),$(shell $(PY) -c 'from devstack import binaries; print(binaries.ensure(log=lambda m: None, need=("kubectl",)).path("kubectl"))' 2>/dev/null))
MANIFESTS ?= manifests

deploy: ## install the CRD and the operator in the current context (MANIFESTS=manifests/overlays/namespaced: listed namespaces)
	$(KUBECTL) apply --server-side -f crds/
	$(KUBECTL) apply -k $(MANIFESTS)

undeploy: ## remove the operator; the CRD, the promotions and what they deployed stay
	$(KUBECTL) delete -k $(MANIFESTS) --ignore-not-found

BENCH_MINUTES ?= 30
bench: $(STAMP) $(OPSTAMP) ## benchmarks on devstacks of their own (latency, scale, memory, copy; ~55 min, idle machine); tables + bench/results/*.json
	$(PY) bench/run_all.py --minutes $(BENCH_MINUTES)

.PHONY: bench

# Linters that are not Python packages: actionlint is built once from the Go module proxy.
ACTIONLINT_VERSION := v1.7.12
ACTIONLINT := $(VENV)/tools/actionlint-$(ACTIONLINT_VERSION)/actionlint
SHELL_SCRIPTS = .ci/run $(shell find . \( -path ./.venv -o -path ./.git -o -path ./.devstack \) -prune -o -name '*.sh' -print)

$(ACTIONLINT):
	@command -v go >/dev/null || { echo "actionlint is built with Go: install Go (https://go.dev/dl) or apt-get install -y golang"; exit 1; }
	GOBIN=$(abspath $(dir $@)) go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

# The Python linters first: they need no Go.
lint: $(STAMP) ## ruff, mypy (operator, devstack), import contracts, hadolint, shellcheck, actionlint, helm lint + template
	$(VENV)/bin/ruff check operator devstack tests experiments bench charts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile experiments/Dockerfile
	@command -v shellcheck >/dev/null || { echo "shellcheck is not installed: apt-get install -y shellcheck (Debian/Ubuntu), brew install shellcheck (macOS)"; exit 1; }
	shellcheck $(SHELL_SCRIPTS)
	@$(MAKE) --no-print-directory $(ACTIONLINT)
	$(ACTIONLINT)
	@# helm is built once from the Go module proxy (devstack/tools.py), like the Kubernetes binaries.
	helm=$$($(PY) -m devstack.tools helm) \
	  && $$helm lint --strict $(CHART) \
	  && $$helm lint --strict $(CHART) --set-json 'watchNamespaces=["models"]' \
	    --set serviceMonitor.enabled=true,prometheusRule.enabled=true,grafanaDashboard.enabled=true,namespace.create=true \
	  && $$helm template mlflow-seldon-promoter $(CHART) --namespace promoter-system --include-crds >/dev/null

.PHONY: help install demo up down test test-unit test-image test-faults test-e2e crds manifests run deploy undeploy lint
