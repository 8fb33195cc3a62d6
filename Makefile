# canaryd's one entry point for setup, checks and demos. `make` alone lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv/bin
SMOKE := ../shared/contract/smoke.py
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS="-k judge -x"`.
PYTEST_ARGS ?=

.PHONY: help setup demo test lint format smoke bench

help: ## Show this help
	@echo "canaryd: make TARGET"
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

setup: ## Install missing Debian packages, uv and .venv (idempotent)
	@bash scripts/setup.sh

demo: setup ## Run the local demo (embedded mode)
	$(VENV)/canaryd demo

test: setup ## Everything CI runs: services, lint, types, pytest, contract smoke tests
	@bash scripts/test.sh $(PYTEST_ARGS)

lint: setup ## ruff check, ruff format --check, mypy, import layers, dead code
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy
	$(VENV)/lint-imports
	$(VENV)/vulture src/canaryd tests bench tools/vulture_whitelist.py --min-confidence 60 --exclude src/canaryd/migrations

format: setup ## Fix what ruff can fix and format the code
	$(VENV)/ruff check --fix .
	$(VENV)/ruff format .

smoke: setup ## The shared contract smoke test, embedded then production mode
	python3 $(SMOKE)
	python3 $(SMOKE) --production

bench: setup ## Run every bench/*.py
	@shopt -s nullglob; files=(bench/*.py); \
	if (( $${#files[@]} == 0 )); then echo "no benchmarks in bench/"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "==> $$f"; $(VENV)/python "$$f" || exit 1; done
