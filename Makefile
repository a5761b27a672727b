# The two commands: `make run` (daemon on the embedded SQLite default, foreground)
# and `make test` (ruff, mypy and the whole pytest suite).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= var
ARGS   ?=

.PHONY: run test lint typecheck unit bench clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,fast]'
	@# python-ldap compiles against libldap/libsasl headers; without them the
	@# LDAP tests skip (and fail in CI, where REQUIRE_ALL_BACKENDS=1).
	-$(BIN)/pip install -q 'python-ldap>=3.4' 2>/dev/null || \
	    echo "note: python-ldap could not be built (libldap2-dev/libsasl2-dev missing?); LDAP tests will skip"
	touch $@

venv: $(VENV)/.installed

run: $(VENV)/.installed
	mkdir -p $(DATA)
	$(BIN)/iredapd --foreground -o DATA_DIR=$(DATA) $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(VENV)/.installed
	$(BIN)/pytest tests/unit tests/plugins $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
