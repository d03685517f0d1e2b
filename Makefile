# VisionLoop. `make` lists the targets; `make up` runs the platform, `make test` the tests.
SHELL := /bin/bash
# Settings from .env (copy .env.example), exported to every command below.
-include .env
export $(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' .env 2>/dev/null)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOME_DIR := $(abspath $(or $(VISIONLOOP_HOME),.visionloop))

# Keep every tool's caches and config inside the working dir, never in $HOME,
# and switch telemetry off.
export VISIONLOOP_HOME := $(HOME_DIR)
export UV_CACHE_DIR ?= $(HOME_DIR)/cache/uv
export UV_PYTHON_DOWNLOADS := never
export KERAS_HOME ?= $(HOME_DIR)/cache/keras
export MPLCONFIGDIR ?= $(HOME_DIR)/cache/matplotlib
export BENTOML_HOME ?= $(HOME_DIR)/bentoml
export XDG_CACHE_HOME ?= $(HOME_DIR)/cache/xdg
export XDG_CONFIG_HOME ?= $(HOME_DIR)/config
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export BENTOML_DO_NOT_TRACK := true
export SCARF_ANALYTICS := false
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED := False
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONDONTWRITEBYTECODE := 1

UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
STAMP := $(VENV)/.synced

.DEFAULT_GOAL := help
.PHONY: help venv up down status test test-fast lint bench data train serve bento monitor clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.tools/bin/uv:
	@echo "uv not found: installing it into .tools/ with pip"
	$(PY) -m venv .tools && .tools/bin/pip install -q uv

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra dev --extra docker --python $(PY)
	@touch $@

venv: $(STAMP) ## Create .venv from uv.lock (uv is installed with pip if missing)

up: $(STAMP) ## Start MLflow, Airflow and (once a champion exists) BentoML; run the first pipeline
	$(BIN)/visionloop platform up

down: $(STAMP) ## Stop everything `make up` started
	$(BIN)/visionloop platform down

status: $(STAMP) ## Show each component, its URL and health
	$(BIN)/visionloop platform status

test: $(STAMP) ## Install test tools and run the whole test suite
	@bash infra/scripts/ensure-chromium.sh
	@bash infra/scripts/ensure-services.sh
	$(BIN)/python -m pytest tests --durations=25

test-fast: $(STAMP) ## Unit tests only
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP) ## Ruff over the code
	$(BIN)/ruff check ml serving dags tests bench

bench: $(STAMP) ## Run every benchmark in bench/ (each prints one JSON line)
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

data: $(STAMP) ## Build the dataset snapshot from VISIONLOOP_DATA_SOURCES
	$(BIN)/visionloop data build

train: $(STAMP) ## Train, evaluate, fit OOD, build bundle + reference pack, then gate, on the newest snapshot (NO_REGISTER=1 stops before the gate)
	$(BIN)/visionloop train run $(if $(NO_REGISTER),--no-register)

serve: $(STAMP) ## Serve the champion in the foreground
	$(BIN)/visionloop serve start

bento: $(STAMP) ## Build the Bento offline (BUNDLE_DIR=dir bakes a bundle, CHAMPION=1 the registry champion)
	$(BIN)/visionloop serve build $(if $(BUNDLE_DIR),--bundle-dir $(BUNDLE_DIR)) $(if $(CHAMPION),--champion)

monitor: $(STAMP) ## Compute drift over the requests logged since the last run
	$(BIN)/visionloop monitor run

clean: ## Remove the working dir (store, MLflow, Airflow state) but keep .venv
	rm -rf $(HOME_DIR)
