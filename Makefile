# Rebound: `make dev` runs the whole service locally, `make test` runs every check.
# Everything installs into .venv from pinned requirements; the one system package is Chromium, for
# the dashboard's browser tests (Debian's build: Playwright's own download cannot work here).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt requirements-sam.txt | cksum | cut -d' ' -f1)

export PYTHONDONTWRITEBYTECODE := 1

CHROMIUM ?= /usr/bin/chromium

.PHONY: install dev test fuzz lint migrate package bench sizing chaos loadtest stats-check clean chromium

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-sam.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'pip<26.3'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -rf $(VENV)/sam-translator
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --target $(VENV)/sam-translator -r requirements-sam.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

lint: install
	$(BIN)/ruff check app.py chalicelib scripts tests
	$(BIN)/mypy

test: lint chromium
	CHROMIUM_PATH=$(CHROMIUM) $(BIN)/python -m pytest

# Installs Chromium when it is missing. Without root or apt this stops `make test` with the reason:
# the browser tests must run, never be skipped.
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing Chromium for the browser tests (apt-get install -y chromium)"; \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) || exit 1; \
	  else \
	    echo "make: ERROR: Chromium is missing at $(CHROMIUM) and cannot be installed here (needs root and" \
	         "apt-get). Install it (apt-get install -y chromium) or set CHROMIUM=/path/to/chromium." >&2; \
	    exit 1; \
	  fi; }
	@test -x $(CHROMIUM) || { echo "make: ERROR: Chromium still missing at $(CHROMIUM)" >&2; exit 1; }

# The security suite's schemathesis run with more examples and a fresh seed each time
# (make test runs it seeded, 200 examples per operation). FUZZ_EXAMPLES=5000 make fuzz for more.
FUZZ_EXAMPLES ?= 1000
fuzz: install
	REBOUND_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) REBOUND_FUZZ_SEED=random $(BIN)/python -m pytest tests/security/test_fuzz.py -q

dev: install
	$(BIN)/python scripts/dev.py

migrate: install
	$(BIN)/python scripts/migrate.py

package: install
	$(BIN)/python scripts/package.py

bench: install
	$(BIN)/python scripts/bench.py

# What a Lambda memory size buys (cold start, warm webhook) under each size's CPU share.
sizing: install
	$(BIN)/python scripts/sizing.py

# The full chaos run (10,000 deliveries over 200 companies); `make test` runs a small one.
chaos: install
	$(BIN)/python scripts/chaos.py

loadtest: install
	$(BIN)/python scripts/loadtest.py

# The measurement simulation (issue 17): 4,000 companies, 1,000 A/A experiments; `make test`
# runs a seeded 300-run version. Exits 1 when a goal is missed.
stats-check: install
	$(BIN)/python scripts/stats_check.py

clean:
	rm -rf $(VENV) .dev .tmp build
