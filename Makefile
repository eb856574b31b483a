# Two commands do all the set-up on a fresh clone:
#   make demo   creates .venv, installs the pinned stack, runs the quickstart pipeline on synthetic data
#   make test   creates .venv, installs the pinned stack, runs ruff (lint + format check) and pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEVICE ?= cpu
PIP_ARGS ?=
STAMP := $(VENV)/.installed-$(DEVICE)
OUT ?= runs/quickstart

.PHONY: setup demo test lint format bench reference docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml tools/fbgemm-gpu-stub/pyproject.toml
	@echo "==> [setup] virtual environment: $(VENV)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "==> [setup] installing recsys-mtl and its pinned stack for $(DEVICE) (torch, torchrec, polars, mlflow, optuna); the first time takes a minute or two"
ifeq ($(DEVICE),cpu)
	@$(BIN)/pip install --disable-pip-version-check --quiet $(PIP_ARGS) ./tools/fbgemm-gpu-stub -e ".[cpu,dev]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
else
	@$(BIN)/pip install --disable-pip-version-check --quiet $(PIP_ARGS) -e ".[gpu,dev]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
endif
	@$(BIN)/python -c "import torch, torchrec, polars, optuna; from importlib.metadata import version as v; print('==> [setup] ready: torch', torch.__version__, '| torchrec', v('torchrec'), '| polars', polars.__version__, '| mlflow', v('mlflow'), '| optuna', optuna.__version__)"
	@touch $(STAMP)

demo: setup
	@echo "==> [demo] recsys-mtl run configs/quickstart.yaml --out $(OUT)"
	@$(BIN)/recsys-mtl run configs/quickstart.yaml --out $(OUT)

lint: setup
	@echo "==> [lint] ruff check + ruff format --check"
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .

format: setup
	@$(BIN)/ruff format .
	@$(BIN)/ruff check --fix .

# The suite runs in one process per core, at most 4 (pytest-xdist; each test file in one
# process, so a file's shared fixtures are built once); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))

test: lint
	@echo "==> [test] pytest ($(TEST_WORKERS) workers)"
	@$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

bench: setup
	@$(BIN)/python benchmarks/ingest.py --quick

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache

# The generated reference pages (a test fails when one is out of date); written through a
# temporary file so that a failing generator leaves the page as it was.
REFERENCES := recsys_mtl.config.reference:configuration pipelines.reference:components \
	pipelines.cli_reference:cli

reference: setup
	@echo "==> [reference] docs/reference/{configuration,components,cli}.md from the config schema, the components' settings and the CLI parsers"
	@set -e; for ref in $(REFERENCES); do \
		page=docs/reference/$${ref#*:}.md; \
		$(BIN)/python -m $${ref%%:*} > $$page.tmp && mv $$page.tmp $$page; \
	done

docs: reference
	@echo "==> [docs] python benchmarks/report.py (results pages) + mkdocs build --strict -> site/"
	@$(BIN)/python benchmarks/report.py
	@$(BIN)/mkdocs build --strict --site-dir site
