# Every target is self-sufficient on a fresh machine: it creates .venv first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,ray,datasets,quant,studio]"
	touch $(STAMP)

demo: setup
	$(BIN)/llm-dit demo --out out/demo

# The report test renders report.html in headless Chromium (Debian's chromium package).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		{ echo "the report test needs Debian's chromium: sudo apt-get install chromium"; exit 1; }

# Two workers on the 2-core CI machine (tests/conftest.py gives each one thread); the 25 slowest tests are listed.
test: setup browser
	$(BIN)/python -m pytest -q -n 2 --durations=25

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

bench: setup
	$(BIN)/llm-dit bench --preset small --json out/bench.json

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
