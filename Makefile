# Two commands do everything from a clean clone: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export XENIUM_ASSETS_DATA := $(CURDIR)/data
export DAGSTER_HOME := $(CURDIR)/data/dagster_home

.PHONY: demo test bench dev mlflow install clean

install: $(STAMP)

# constraints.txt pins the versions the suite was last run with, so a fresh install resolves the same way.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	ln -sfn ../../dagster.yaml $@

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/xenium-assets demo

test: $(STAMP)
	$(BIN)/ruff check xenium_assets xenium_assets_tests
	$(BIN)/pytest

# Slow benchmarks: never part of `make test`.
bench: $(STAMP)
	$(BIN)/xenium-assets bench patches
	$(BIN)/xenium-assets bench synth
	$(BIN)/xenium-assets bench labels

dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

# The MLflow UI on the project's embedded store (http://127.0.0.1:5000).
mlflow: $(STAMP)
	mkdir -p data/mlflow
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/data/mlflow/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf data/dagster_home data/samples data/demo data/labels data/models data/reports data/mlflow
