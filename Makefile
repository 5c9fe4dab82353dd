# Turnout — the two commands a user needs: `make test` and `make demo`.
# Both build from nothing: a fresh .venv, every dependency from the lock file locks/dev.txt
# (pinned, hash-checked), then the project itself. `make lock` renews the lock files.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck importlint unit integration install clean browser kafka kcat litellm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml locks/dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r locks/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The lock files pin every dependency with its hashes, one per deployable set of extras:
# locks/dev.txt (make test, make demo), locks/demo.txt (the full image), locks/router.txt (the
# router image). `make lock` re-resolves them after pyproject.toml's dependencies change and
# keeps every pin that still fits; `make lock UPGRADE=1` moves every pin to the newest release
# allowed. uv resolves for every platform from Python 3.11.5 on; demo and router take dev's
# pins (-c), so the sets never disagree. Commit the lock files with the change.
UV_VERSION := 0.13.9
UV_COMPILE  = $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11.5 \
              --generate-hashes --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)

.PHONY: lock
lock: | $(BIN)/python
	@$(BIN)/uv --version 2>/dev/null | grep -qF ' $(UV_VERSION)' || \
	  $(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(UV_COMPILE) --extra dev -o locks/dev.txt
	$(UV_COMPILE) --extra demo -c locks/dev.txt -o locks/demo.txt
	$(UV_COMPILE) --extra router -c locks/dev.txt -o locks/router.txt

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

importlint: $(STAMP)
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP)
	$(BIN)/pytest tests/integration tests/e2e -q

# The dashboard's browser test drives Chromium: Debian's package, installed when apt-get is there.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make: no Chromium and no apt-get here: install Chromium for tests/e2e/test_dashboard_browser.py"

# Apache Kafka's jars, resolved from Maven Central once (Java >= 17 and Maven), then cached in
# ~/.cache/turnout/kafka. Without Java the suite and the demo run on Tansu and say so.
kafka: $(STAMP)
	@{ command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; } || \
	  { command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null; } || \
	  echo "make: no Java/Maven and no apt-get here: the suite and the demo will run on Tansu"
	$(BIN)/turnout broker --prepare

# Debian's kcat (librdkafka) checks that a plain non-Python client works with the broker.
kcat:
	@command -v kcat >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null; } || \
	  echo "make: no kcat and no apt-get here: install kcat for tests/e2e/test_kafka_cli.py"

# The LiteLLM proxy (with its mock responses): an OpenAI-compatible server no one here wrote,
# configured as a second provider in tests/integration/test_third_party_provider.py. Its
# own venv (its many pinned dependencies stay out of ours), made once and cached in
# ~/.cache/turnout/litellm-<version>.
LITELLM_VERSION := 1.72.0
LITELLM_VENV    := $(HOME)/.cache/turnout/litellm-$(LITELLM_VERSION)
litellm:
	@test -x $(LITELLM_VENV)/bin/litellm || { \
	  echo "make: installing the LiteLLM proxy $(LITELLM_VERSION) into $(LITELLM_VENV) (once)"; \
	  rm -rf $(LITELLM_VENV) && $(PYTHON) -m venv $(LITELLM_VENV) && \
	  $(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)' || \
	  { rm -rf $(LITELLM_VENV); echo "make: could not install litellm[proxy]==$(LITELLM_VERSION) from PyPI"; exit 1; }; }

test: lint typecheck importlint docs browser kcat kafka litellm
	TURNOUT_TEST_LITELLM=$(LITELLM_VENV)/bin/litellm $(BIN)/pytest -q

demo: $(STAMP) kafka
	$(BIN)/turnout demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# The docs site (docs/, mkdocs.yml) into build/site. --strict makes every warning an error:
# a broken link or anchor between pages, a page missing from the nav (the link check of
# `make test`; external links are not fetched). The reference pages are generated from the
# code at build time (docs/hooks/reference.py). Preview: $(BIN)/mkdocs serve
.PHONY: docs
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site
