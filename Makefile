# Switchboard. `make run` serves config.yaml; `make test` runs the suite; `make bench` measures.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= config.yaml
# `make run PORT=9000 HOST=0.0.0.0 CONFIG=my.yaml EXTRAS=litellm` (EXTRAS: optional dependencies
# to serve with, e.g. litellm for local models; comma-separated)
PORT    ?=
HOST    ?=
EXTRAS  ?=
RUN_STAMP := $(VENV)/.installed-run$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))
comma   := ,

.PHONY: install run test lint bench clean system-deps

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[litellm,otel,test,dev]'
	touch $(STAMP)

# What serving needs, and nothing else: `make run` stays small (the test and dev tools, and
# LiteLLM unless asked for, come with `make test` / `make lint`).
$(RUN_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.$(if $(EXTRAS),[$(EXTRAS)])'
	touch $@

install: $(STAMP)

# Debian packages the tests use (a real redis-server). Needs root; skipped when present.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server missing: the Redis store tests will be skipped (run as root to install)"; fi; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium missing: the status page browser test will be skipped (run as root to install)"; fi; }

run: $(RUN_STAMP)
	$(BIN)/switchboard serve --config $(CONFIG) $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# Three workers: most tests wait on sockets and subprocesses, so this halves the time on 2 cores.
test: install system-deps
	$(BIN)/python -m pytest -q -n 3

lint: install
	$(BIN)/ruff check proxy providers platforms tests
	$(BIN)/mypy proxy providers platforms

bench: install
	$(MAKE) -C bench all

clean:
	rm -rf $(VENV) .pytest_cache
