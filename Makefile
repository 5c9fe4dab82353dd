# Turnout — the two commands a user needs: `make test` and `make demo`.
# Both build from nothing: a fresh .venv, the project and its dev extras.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test demo lint typecheck importlint unit integration install clean browser kafka kcat litellm

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

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

test: lint typecheck importlint browser kcat kafka litellm
	TURNOUT_TEST_LITELLM=$(LITELLM_VENV)/bin/litellm $(BIN)/pytest -q

demo: $(STAMP) kafka
	$(BIN)/turnout demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
