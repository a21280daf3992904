# Switchboard. `make run` serves config.yaml; `make test` runs the suite; `make bench` measures.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= config.yaml

.PHONY: install run test lint bench clean system-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[litellm,test,dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use (a real redis-server). Needs root; skipped when present.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server missing: the Redis store tests will be skipped (run as root to install)"; fi; }

run: install
	$(BIN)/switchboard serve --config $(CONFIG)

test: install system-deps
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check proxy providers platforms tests
	$(BIN)/mypy proxy providers platforms

bench: install
	$(MAKE) -C bench all

clean:
	rm -rf $(VENV) .pytest_cache
