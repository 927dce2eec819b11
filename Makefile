# Task runner: the README and CI call these targets. Each sets up what it needs by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: run serve test lint format clean

run: $(STAMP) ## Web server + a push_data feed on PORT (default 8000), Redis found or embedded; Ctrl-C stops all
	PORT=$(PORT) $(PY) scripts/devenv.py run

serve: $(STAMP) ## The production server configuration on PORT, no feed (publish with manage.py push_data)
	PORT=$(PORT) $(PY) scripts/devenv.py serve

test: $(STAMP) ## The whole test suite against a real Redis (found or embedded)
	$(PY) scripts/devenv.py exec -- $(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache staticfiles
