# The two quick-start commands (`make demo`, `make test`) do all set-up on a machine with only Python.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest -p no:cacheprovider

.PHONY: install demo test test-slow test-all lint bench schemas golden clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## demo: run the example environment end to end on the embedded stack (deploy, then destroy)
demo: $(STAMP)
	$(BIN)/trellis run examples/demo --environment demo
	$(BIN)/trellis run examples/demo --environment demo --action destroy

## test: the whole suite except the long fault-injection tests and benchmarks
test: $(STAMP)
	$(PYTEST) -m "not slow and not bench" -q

## test-slow: the long fault-injection tests (CI runs them too)
test-slow: $(STAMP)
	$(PYTEST) -m "slow" -q || test $$? -eq 5  # 5: no slow test selected

test-all: test test-slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

## bench: speed and memory figures (medians, side by side); never asserted by timed tests
bench: $(STAMP)
	$(PYTEST) -m bench -q -s tests

schemas: $(STAMP)
	$(BIN)/trellis schemas export

golden: $(STAMP)
	UPDATE_GOLDEN=1 $(PYTEST) -q tests/templates -k golden

clean:
	rm -rf .trellis .pytest_cache .mypy_cache .ruff_cache
