# sockapp: `make run` serves, `make test` checks. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 5634
PYTEST_ARGS ?=

# Regenerate Twisted's plugin cache after installing, so twistd never has to
# (and never logs "Unable to write to plugin cache").
REFRESH_PLUGIN_CACHE = $(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

.PHONY: run test check install clean fuzz soak microbench bench integration haproxy postgresql coverage attack docs

run: $(VENV)/.installed
	$(BIN)/twistd -n --pidfile= sockapp --port $(PORT)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Types (mypy with the mypy-zope plugin, src/ strict), lint and format; settings in pyproject.toml.
check: $(VENV)/.installed-check
	$(BIN)/mypy
	$(BIN)/ruff check
	$(BIN)/ruff format --check

install: $(VENV)/.installed

# `make test` under coverage.py, the twistd and sockapp subprocesses included; report on src/.
coverage: $(VENV)/.installed-test
	$(BIN)/python -m coverage erase
	$(BIN)/python -m coverage run -m pytest -p no:cacheprovider $(PYTEST_ARGS)
	$(BIN)/python -m coverage combine -q
	$(BIN)/python -m coverage report

# deploy/haproxy.cfg for real: HAProxy in front of 3 servers on loopback, one killed mid-load; and
# 3 kv servers on one PostgreSQL behind it (each test starts its own PostgreSQL cluster on loopback).
integration: $(VENV)/.installed-test haproxy postgresql
	$(BIN)/python -m pytest -m integration -s -p no:cacheprovider $(PYTEST_ARGS)

# Debian's haproxy, installed if it is not there (needs root, as on CI).
haproxy:
	@command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy || { \
		echo "installing Debian's haproxy"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy; }

# Debian's postgresql (initdb, pg_ctl, postgres, psql), installed if it is not there (needs root, as on CI).
# The integration tests start a private cluster of their own on 127.0.0.1 (tests/pg_cluster.py), not this one.
postgresql:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; }

# Thousands of connections of every kind against one server, on loopback; not part of `make test`.
soak: $(VENV)/.installed-test
	$(BIN)/python soak/soak.py $(SOAK_ARGS)

# Hostile peers against real servers on loopback, each measured from /proc; not part of `make test`.
attack: $(VENV)/.installed-test
	$(BIN)/python soak/attack.py $(ATTACK_ARGS)

# sockapp against the same protocol on asyncio and uvloop: table and plot in benchmarks/results/.
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Codec micro-benchmarks (pytest-benchmark), a few seconds; not part of `make test`.
microbench: $(VENV)/.installed-bench
	$(BIN)/python -m pytest benchmarks/test_codec_bench.py --benchmark-only --benchmark-columns=min,median,ops -p no:cacheprovider

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(REFRESH_PLUGIN_CACHE)
	touch $@ $(VENV)/.installed $(VENV)/.installed-test

# Coverage-guided fuzzing of the decoder (atheris); not part of `make test`.
FUZZ_SECONDS ?= 60
fuzz: $(VENV)/.installed-fuzz
	mkdir -p fuzz/corpus
	$(BIN)/python fuzz/fuzz_decoder.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 fuzz/corpus fuzz/seeds

$(VENV)/.installed-fuzz: pyproject.toml $(VENV)/.python
	$(BIN)/python -m pip install --quiet -e '.[test,fuzz]'
	$(REFRESH_PLUGIN_CACHE)
	touch $@ $(VENV)/.installed $(VENV)/.installed-test

# The API reference (pydoctor, options in pyproject.toml's [tool.pydoctor]) in build/docs;
# any warning fails it.
docs: $(VENV)/.installed-check
	rm -rf build/docs
	$(BIN)/pydoctor

$(VENV)/.installed-check: pyproject.toml $(VENV)/.python
	$(BIN)/python -m pip install --quiet -e '.[test,check]'
	$(REFRESH_PLUGIN_CACHE)
	touch $@ $(VENV)/.installed $(VENV)/.installed-test

$(VENV)/.python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sockapp needs Python 3.11 or newer: set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.python
	$(BIN)/python -m pip install --quiet -e .
	$(REFRESH_PLUGIN_CACHE)
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(REFRESH_PLUGIN_CACHE)
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis .mypy_cache .ruff_cache .coverage .coverage.* twisted/plugins/dropin.cache
