# The two set-up commands (README): `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Parallel test workers (pytest-xdist; CI has 2 cores). How the tests are spread over them: tests/conftest.py
# (a test file stays on one worker, so the servers it starts are started once; long scenarios go first).
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS)

.PHONY: demo test test-all lint bench install

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/smscast demo

# Test code imports its helpers by file name (pytest's importlib mode with tests/ on the path: `from support
# import ...`), so mypy checks each of its directories from inside it, tests/ on its path. One cache for all
# of them: each would otherwise analyse smscast, Prefect and Polars again (a cold lint took 2m47s).
TYPED_SCRIPT_DIRS := tests tests/hostile tests/reliability tests/providers tests/providers/contract benchmarks

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@for d in $(TYPED_SCRIPT_DIRS); do \
		echo "mypy --strict $$d"; \
		(cd $$d && MYPYPATH=$(CURDIR)/tests $(abspath $(BIN))/mypy --config-file $(CURDIR)/pyproject.toml \
			--cache-dir $(CURDIR)/.mypy_cache --strict --no-namespace-packages *.py) || exit 1; \
	done

test: $(BIN)/.installed lint
	$(BIN)/pytest $(PYTEST_PARALLEL)

# The long soak and benchmark-sized tests, on purpose only.
test-all: $(BIN)/.installed
	$(BIN)/pytest $(PYTEST_PARALLEL) -m ''

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/pipeline.py
