# Two commands for a newcomer on a fresh machine (each creates .venv and installs everything):
#   make run    the main job on the embedded default: a study on local Ray, bundled digits data
#   make test   the test suite (CI's .ci/run runs it, then make bench-check)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test bench-check install system-packages docs-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/advtune run

# Debian packages two tests use: headless Chromium (the report page) and Fashion-MNIST (the IDX
# loader on real files). Installed when this runs as root with apt; otherwise those tests skip.
system-packages:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium dataset-fashion-mnist >/dev/null; \
	else echo "note: not root with apt-get: the Chromium and Fashion-MNIST tests will be skipped"; fi

test: $(STAMP) system-packages
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -n 2

# Every benchmark's --quick mode prints the ratio lines it promises (~5 min; CI runs it after `make test`)
bench-check: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q bench/test_quick_modes.py

clean:
	rm -rf $(VENV) advtune_runs runs

docs-check: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q tests/test_docs.py
