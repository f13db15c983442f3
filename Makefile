# Quickstart: `make demo`, then `make test`. Needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TESTSTAMP := $(VENV)/.installed-test

.PHONY: demo test lint typecheck unit bench bench-audit bench-tools bench-watch soak clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "aiperimeter needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

# The test tools and the real products the scanner is tested against (Jupyter, an MCP server, Gradio); and
# Debian's Chromium for the dashboard's browser tests (Playwright drives it; it never downloads a browser).
$(TESTSTAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@test -x /usr/bin/chromium || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
		>/dev/null; } || echo "Chromium is not installed: the dashboard's browser tests will be skipped"
	touch $(TESTSTAMP)

demo: $(STAMP)
	$(BIN)/aiperimeter demo

lint: $(TESTSTAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(TESTSTAMP)
	$(BIN)/mypy

unit: $(TESTSTAMP)
	$(BIN)/pytest tests/unit -q

test: lint typecheck
	$(BIN)/pytest -q

bench: $(TESTSTAMP)
	$(BIN)/python benchmarks/gateway_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build src/*.egg-info

bench-audit: $(TESTSTAMP)
	$(BIN)/python benchmarks/audit_bench.py

# The tool-call policy against 462 benign and malicious agent calls: accuracy, and the latency the guard adds.
bench-tools: $(TESTSTAMP)
	$(BIN)/python benchmarks/toolcall_eval.py --json benchmarks/results/toolcall_eval.json

# The anomaly detector over 5 simulated weeks of 40 keys with 60 injected incidents: recall, time to detect, false alerts.
bench-watch: $(TESTSTAMP)
	$(BIN)/python benchmarks/watch_eval.py --json benchmarks/results/watch_eval.json --markdown benchmarks/results/watch_eval.md
	$(BIN)/python benchmarks/watch_path.py --json benchmarks/results/watch_path.json

# The hardening run (about an hour): the attack catalog, 1,000,000 fuzz inputs, injected faults and a 30-minute soak
# at 70% of measured capacity; writes benchmarks/results/hardening.md and fails if any target is missed.
soak: $(TESTSTAMP)
	$(BIN)/python benchmarks/soak.py
