# lab_kit — everyday commands. Most need root (the lab builds real network namespaces):
#   sudo make lab          start JupyterLab on http://localhost:8888/lab?token=lab
#   sudo make test         all tests (unit, integration on the real kernel, notebooks)
#   make test-unit         unit tests only, no root needed (once .venv exists)
# Variables: PORT (8888), TOKEN (lab), PYTEST_ARGS (extra pytest arguments).

SHELL := /bin/bash

PORT ?= 8888
TOKEN ?= lab
PYTEST_ARGS ?=

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lab_kit-setup

.PHONY: setup lab test test-unit lint bench clean

setup: $(STAMP)

# scripts/setup.sh writes the stamp last, so a failed setup runs again next time.
$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

# The token is fixed ("lab") so the URL is easy to type in a classroom; the VM forwards the port
# to the host's 127.0.0.1 only. Override it when the machine is reachable by others: TOKEN=...
# (jupyter_server 2 spells ServerApp.token as IdentityProvider.token.)
lab: setup
	@echo "==> open http://localhost:$(PORT)/lab?token=$(TOKEN)"
	$(VENV)/bin/jupyter lab --allow-root --no-browser --ip=0.0.0.0 --port=$(PORT) \
		--notebook-dir=labs --IdentityProvider.token=$(TOKEN) \
		--MappingKernelManager.default_kernel_name=lab_kit

test: setup
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

# Order-only: needs a .venv (made once by `sudo make setup`) but never re-runs the root-only
# setup just because pyproject.toml is newer.
test-unit: | $(STAMP)
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

lint: | $(STAMP)
	$(VENV)/bin/ruff check lab_kit tests benchmarks

bench: setup
	@shopt -s nullglob; files=(benchmarks/bench_*.py); failed=0; \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks/bench_*.py"; exit 0; fi; \
	for f in "$${files[@]}"; do \
		echo "==> $$f"; $(PY) "$$f" || { echo "FAILED: $$f"; failed=1; }; \
	done; \
	exit $$failed

# Tear down every lab cluster (namespaces, links, processes, rules); never fails.
clean:
	@if [ -x $(VENV)/bin/lab-kit ]; then \
		$(VENV)/bin/lab-kit down --all || echo "lab-kit down --all failed (ignored)"; \
	fi
