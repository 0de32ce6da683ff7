# Two commands matter: `make run` (the whole tiny pipeline) and `make test` (the test suite).
# Both create .venv and install the project on first use, and are fast when it is already installed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export MLFLOW_DISABLE_TELEMETRY := true
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install run test test-all lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(PY) pipelines/full_run.py --preset tiny

test: install
	$(PY) -m pytest -q

# The slow tests include the report opened in headless Chromium (skipped without it: apt-get install -y chromium).
test-all: install
	$(PY) -m pytest -q -m ''

lint: install
	$(PY) -m ruff check vlv pipelines tests benchmarks

clean:
	rm -rf vlv_runs .pytest_cache
