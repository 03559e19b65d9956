# One source of truth for commands: the README and CI call these targets.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
DATA    ?= ../shared/data

.PHONY: demo test test-fast deps-system lint bench models arm-check clean dist deploy-check

$(PY):
	python3 -m venv $(VENV)

# torch first and pinned: the CPU wheel on disk. Any looser request would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,bench,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeae demo --out demo-out

# System programs the tests run for real (Debian packages; installed as root when missing).
deps-system:
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto)
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

test: $(STAMP) deps-system
	$(PY) -m pytest -q

test-fast: $(STAMP) deps-system
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/edgeae bench --quality --data $(DATA) --out bench-out

# Reproduce the default models (hours on 2 CPU cores; minutes on one GPU with --parallel --minutes 8).
models: $(STAMP)
	$(PY) -m training.defaults --data $(DATA) --out runs --stage 1
	$(PY) -m training.defaults --data $(DATA) --out runs --stage 2
	$(PY) -m export.defaults --runs runs --out models

arm-check: $(STAMP)
	bash benchmarks/arm_check.sh

clean:
	rm -rf demo-out bench-out .pytest_cache

# The wheel and the sdist (docs/deploy.md): what `pip install edgeae-*.whl` takes on a device and what
# deploy/Dockerfile copies. BUILD_FLAGS=--no-isolation builds with this venv's setuptools instead of a fresh one.
DIST        ?= dist
BUILD_FLAGS ?=
dist: | $(PY)
	$(PY) -c "import build" 2>/dev/null || $(PY) -m pip install --quiet build
	rm -f $(DIST)/edgeae-*.whl $(DIST)/edgeae-*.tar.gz
	$(PY) -m build $(BUILD_FLAGS) --outdir $(DIST) .

# deploy/ checked with the tools this machine has: tests/test_deploy.py (systemd-analyze, the wheel in a fresh
# venv, the Dockerfile's pip steps), then `docker build` and a run of the image where a Docker engine answers.
deploy-check: $(STAMP) dist
	$(PY) -m pytest -q tests/test_deploy.py
	@if docker info >/dev/null 2>&1; then \
		docker build -f deploy/Dockerfile -t edgeae-runtime . && \
		docker run --rm edgeae-runtime --version && \
		test "$$(docker run --rm --entrypoint id edgeae-runtime -u)" != 0 && \
		! docker run --rm --entrypoint python edgeae-runtime -c "import torch"; \
	else echo "deploy-check: no Docker engine answers here; the Dockerfile's pip steps ran in a fresh venv instead"; fi
