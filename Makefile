# Lookalike: `make run` and `make test` do all the set-up on a fresh Debian machine
# (virtual environment, Python packages, Debian packages, the demo gallery). Both are idempotent.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
export DEBIAN_FRONTEND := noninteractive
export LOOKALIKE_DATA ?= $(CURDIR)/data

LOOP_DATA ?= $(CURDIR)/data-loop
SCALE_DATA ?= $(CURDIR)/data-scale
NEW_DATA ?= $(CURDIR)/data-new-categories
LIMIT ?=
.PHONY: run test install browser demo lint typecheck unit bench bench-load bench-beside-lab bench-scale loop new-categories clean

## run: set up everything, fetch and index the demo gallery, compute its map (so the Embeddings
## page opens from the cache), start the app on $(PORT)
run: demo
	$(PY) -m core map-job
	$(VENV)/bin/streamlit run app.py --server.port $(PORT) --server.address 0.0.0.0

## test: the same set-up, then lint, type checks and the whole test suite (browser tests too)
test: demo browser lint typecheck unit

install: $(STAMP)

# torch/torchvision come from this machine's disk (see requirements.txt); the stamp is
# rebuilt whenever a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

## browser: Debian's chromium for the Playwright tests (Playwright cannot download browsers here)
browser:
	@command -v chromium >/dev/null || { apt-get update -y && apt-get install -y --no-install-recommends chromium; }

## demo: fetch the Debian tuxpaint stamps and ingest them with folder labels (idempotent)
demo: install
	$(PY) -m core demo-data

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest

## bench: ingest speed, search latency and index recall on the demo gallery
bench: demo
	$(PY) -m core bench

## bench-load: 1, 2, 4 and 8 people at once in Chromium (upload, results, one label) on a copy
## of the demo gallery (its map computed first, as by make run); time-to-results p50/p95,
## searches/s, and whether the log stayed exact
bench-load: demo browser
	$(PY) -m core map-job
	for users in 1 2 4 8; do $(PY) -m core bench --browser-users $$users --json; done

## bench-beside-lab: search latency alone and while an index-lab job runs on the active version
## (add ARGS="--data-dir data-scale" for the 70,000-image gallery)
bench-beside-lab: demo
	$(PY) -m core bench --beside-lab --json $(ARGS)

## bench-scale: all 70,000 Fashion-MNIST images (or LIMIT=N of them) into a fresh $(SCALE_DATA),
## then ingest speed beside the tower's, search latency, recall, evaluate and the map at that size
bench-scale: install
	rm -rf $(SCALE_DATA)
	$(PY) -m core bench --scale --data-dir $(SCALE_DATA) --json $(if $(LIMIT),--limit $(LIMIT))

## loop: the closed loop, two rounds, on a fresh data dir: the base on test; round 1 simulates
## 300 searches, fine-tunes (the defaults) and activates; round 2 simulates 300 more with that
## version and fine-tunes from it. `models` then shows every version against its parent on test
## over all, seen and unseen categories
loop: install
	rm -rf $(LOOP_DATA)
	$(PY) -m core demo-data --data-dir $(LOOP_DATA)
	$(PY) -m core evaluate --split test --data-dir $(LOOP_DATA)
	$(PY) -m core simulate --queries 300 --seed 0 --data-dir $(LOOP_DATA)
	$(PY) -m core train --from-feedback --activate --data-dir $(LOOP_DATA)
	$(PY) -m core simulate --queries 300 --seed 1 --data-dir $(LOOP_DATA)
	$(PY) -m core train --from-feedback --data-dir $(LOOP_DATA)
	$(PY) -m core models --data-dir $(LOOP_DATA)

## new-categories: hold 24 categories out of the demo gallery, simulate and fine-tune without
## them, add them, and compare the new version with its parent on them (fresh $(NEW_DATA))
new-categories: install
	rm -rf $(NEW_DATA)
	$(PY) -m core new-categories --data-dir $(NEW_DATA) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
