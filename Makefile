# shiftsim — every target sets up .venv when it is missing (or pyproject.toml changed).
#   make demo   the quickstart on the embedded digits data: a table, recovery curves, a report
#   make test   the full test suite (installs the dev, ray, mnist1d and avalanche extras and
#               Debian's chromium + dataset-fashion-mnist when it can)
#   make bench  the speed benchmarks (ratios measured side by side)
#   make lint   ruff

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
EXTRAS ?= dev,ray,mnist1d
AVALANCHE ?= 1

.PHONY: setup demo test bench lint system-packages clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# On this project's machines a CPU build of torch 2.13.0 lies on disk: install it first
	@# when no torch is present, so that the range in pyproject.toml (torch>=2.4) is already
	@# met and pip does not fetch a multi-GB CUDA build. Elsewhere this fetches torch 2.13.0.
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0" || $(PIP) install "torch>=2.4"
	$(PIP) install -e ".[$(EXTRAS)]"
	@# The avalanche extra (tests/test_avalanche.py, benchmarks/vs_avalanche.py), the light
	@# install: torchvision wheels require one exact torch release, so torch and torchvision are
	@# pinned together and pip keeps the CPU torch 2.13.0 instead of fetching the 5.9 GB CUDA
	@# build (~45 s, ~200 MB). That torchvision wheel's compiled operators do not load against
	@# the CPU torch build; shiftsim's import of Avalanche applies a compatibility step for
	@# exactly that error and nothing else (shiftsim/integrations/avalanche/loader.py). With another
	@# torch, pip picks the matching torchvision. AVALANCHE=0 skips the extra (its tests skip).
	@if [ "$(AVALANCHE)" != 0 ]; then \
	  if $(PY) -c "import sys, torch; sys.exit(not torch.__version__.startswith('2.13.0'))"; \
	  then $(PIP) install "torch==2.13.0" "torchvision==0.28.0" -e ".[avalanche]"; \
	  else $(PIP) install -e ".[avalanche]"; fi; fi
	@touch $(STAMP)

setup: $(STAMP)

# Debian packages used by tests: headless chromium (report rendering) and the Fashion-MNIST
# IDX files. Best effort: without root or apt the tests that need them skip with a reason.
system-packages:
	@if command -v chromium >/dev/null 2>&1 && [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     chromium dataset-fashion-mnist >/dev/null) \
	  || echo "warning: apt-get could not install chromium / dataset-fashion-mnist"; \
	else echo "note: not root; chromium / dataset-fashion-mnist not installed (tests skip)"; fi

demo: $(STAMP)
	$(VENV)/bin/shiftsim demo --out demo-out

test: $(STAMP) system-packages
	$(PY) -m pytest

bench: $(STAMP)
	cd benchmarks && ../$(PY) engine_overhead.py
	@for b in optimizer_step row_sums study_scaling vs_avalanche fleet; do \
	  if [ -f benchmarks/$$b.py ]; then (cd benchmarks && ../$(PY) $$b.py) || exit 1; fi; done

lint: $(STAMP)
	$(VENV)/bin/ruff check shiftsim tests benchmarks scenarios

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
