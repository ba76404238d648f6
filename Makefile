# Two commands for a newcomer on a fresh machine (each creates .venv and installs everything):
#   make run    the main job on the embedded default: a study on local Ray, bundled digits data
#   make test   the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install docs-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/advtune run

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q

clean:
	rm -rf $(VENV) advtune_runs runs

docs-check: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q tests/test_docs.py
