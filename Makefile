# Two commands do everything from a clean clone: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export XENIUM_ASSETS_DATA := $(CURDIR)/data
export DAGSTER_HOME := $(CURDIR)/data/dagster_home

.PHONY: demo test bench dev mlflow view install display-deps clean

install: $(STAMP)

# constraints.txt pins the versions the suite was last run with, so a fresh install resolves the same way.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,viewer]'
	touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	ln -sfn ../../dagster.yaml $@

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/xenium-assets demo

# The viewer's headless tests draw on a private Xvfb. As root on Debian this installs it and Qt's xcb
# libraries; elsewhere the viewer tests skip and say what to install.
display-deps: $(STAMP)
	@PKGS="$$($(BIN)/python -c 'from xenium_assets.viewer.display import XVFB_PACKAGES; print(XVFB_PACKAGES)')"; \
	if ! command -v Xvfb >/dev/null || ! ldconfig -p | grep -q libxcb-icccm; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $$PKGS"; \
	    apt-get install -y -qq --no-install-recommends $$PKGS >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $$PKGS >/dev/null 2>&1; } || \
	    echo "could not install $$PKGS: the viewer tests will skip"; \
	  else echo "no Xvfb and not root: the viewer tests will skip (install $$PKGS)"; fi; \
	fi

# Two pytest-xdist workers, each running whole modules (their fixtures are built once), and each with half the
# CPUs for its math libraries. On 2 CPUs (2026-12-02) the suite took 1,390 s in one process, 1,110 s on two
# workers with all CPUs each (torch's training threads spinning beside the other worker's tests made the
# training fixture 557 s instead of 221 s) and 934 s with one each (the fixture 361 s).
test: $(STAMP) display-deps
	$(BIN)/ruff check xenium_assets xenium_assets_tests
	OMP_NUM_THREADS=$$(( ($$(nproc) + 1) / 2 )) $(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder

# Slow benchmarks: never part of `make test`.
bench: $(STAMP)
	$(BIN)/xenium-assets bench patches
	$(BIN)/xenium-assets bench synth
	$(BIN)/xenium-assets bench labels
	$(BIN)/xenium-assets bench view

dev: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

# The MLflow UI on the project's embedded store (http://127.0.0.1:5000).
mlflow: $(STAMP)
	mkdir -p data/mlflow
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/data/mlflow/mlflow.db --host 127.0.0.1 --port 5000

# napari on the demo sample (a desktop session; on a server use `xenium-assets view demo_a --screenshot demo_a.png`).
view: $(STAMP)
	$(BIN)/xenium-assets view $(or $(SAMPLE),demo_a)

clean:
	rm -rf data/dagster_home data/samples data/demo data/labels data/models data/reports data/mlflow
