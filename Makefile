# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-down test lint typecheck unit integration bench clean install uninstall

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "labq needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[daemon,dev]' --config-settings editable_mode=compat
	touch $@

## demo: set up, start the daemon on embedded Ray, run the example workload, show the queue
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

demo-down: $(STAMP)
	LABQ_SOCKET=$(CURDIR)/.demo/labq.sock $(BIN)/labq down --kill

## test: set up and run every check: lint, types, unit, integration
test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=20 tests

## install: (root) labq for every user of this machine: /opt/labq, /usr/local/bin/labq,
## /etc/labq, systemd units. CLIENT_ONLY=1 for a desktop. See scripts/install.sh.
install:
	bash scripts/install.sh install

uninstall:
	bash scripts/install.sh uninstall

lint: $(STAMP)
	$(BIN)/ruff check scheduler tui tests benchmarks examples scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_policy.py
	$(BIN)/python benchmarks/bench_monitor.py
	$(BIN)/python benchmarks/bench_load.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
