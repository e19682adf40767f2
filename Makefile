# The two quick-start commands (`make demo`, `make test`) do all set-up on a machine with only Python.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST := $(BIN)/pytest -p no:cacheprovider
# Every package, direct or transitive, pinned with its hashes (README: "Installing").
LOCK := requirements.txt
# make bench-peers only: Temporal's SDK and CLI (pyproject's `peers` extra), hashed, at LOCK's versions.
PEERS_LOCK := requirements/peers.lock
PEERS_STAMP := $(VENV)/.peers-installed

.PHONY: install lock lock-peers test-latest demo test test-slow test-all lint bench bench-peers schemas golden clean

install: $(STAMP)

# pip installs exactly the locked files (a hash mismatch or an unlocked dependency stops it), then
# Trellis itself in editable mode, built with the locked setuptools rather than a fresh download.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

## lock: refresh requirements.txt to the newest releases that pyproject.toml allows, on purpose
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/tools.lock
	$(BIN)/uv pip compile --quiet --upgrade --universal --generate-hashes --python-version 3.11 \
		--custom-compile-command "make lock" --extra dev pyproject.toml requirements/build.in -o $(LOCK)
	@echo "requirements.txt refreshed: review the diff, run make test, commit it"
	$(MAKE) lock-peers PEERS_UPGRADE=--upgrade

## lock-peers: lock pyproject's `peers` extra into requirements/peers.lock, constrained to requirements.txt
# (a package both need keeps requirements.txt's version). The extra's requirements reach uv on stdin.
PEERS_UPGRADE ?=
lock-peers:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/tools.lock
	$(BIN)/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["peers"]))' \
		| $(BIN)/uv pip compile --quiet $(PEERS_UPGRADE) --universal --generate-hashes --python-version 3.11 \
		--custom-compile-command "make lock-peers" -c $(LOCK) - -o $(PEERS_LOCK)

## test-latest: the fast suite against the newest releases (not the lock), in .venv-latest
test-latest:
	@test -x .venv-latest/bin/python || $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade -e '.[dev]'
	.venv-latest/bin/pytest -p no:cacheprovider -m "not slow and not bench" -q

## demo: run the example environment end to end on the embedded stack (deploy, then destroy)
demo: $(STAMP)
	$(BIN)/trellis run examples/demo --environment demo
	$(BIN)/trellis run examples/demo --environment demo --action destroy

## test: the whole suite except the long fault-injection tests and benchmarks, in parallel workers
# (pytest-xdist; each worker starts its own nats-server and PostgreSQL). The suite mostly waits on
# servers and child processes, so more workers than CPUs still shortens it; TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(PYTEST) -m "not slow and not bench" -q -n $(TEST_WORKERS)

## test-slow: the long fault-injection tests (CI runs them too)
test-slow: $(STAMP)
	$(PYTEST) -m "slow" -q || test $$? -eq 5  # 5: no slow test selected

test-all: test test-slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

## bench: speed and memory figures (medians, side by side); never asserted by timed tests
bench: $(STAMP)
	$(PYTEST) -m bench -q -s tests --ignore=tests/bench_peers

## bench-peers: Trellis and Temporal's dev server, same shapes, one after the other (docs/benchmarks.md)
$(PEERS_STAMP): $(STAMP) $(PEERS_LOCK)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(PEERS_LOCK)
	@touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)
	$(PYTEST) -m bench -q -s tests/bench_peers

schemas: $(STAMP)
	$(BIN)/trellis schemas export

golden: $(STAMP)
	UPDATE_GOLDEN=1 $(PYTEST) -q tests/templates -k golden

clean:
	rm -rf .trellis .venv-latest .pytest_cache .mypy_cache .ruff_cache
