# The two commands of the README are `make run` and `make test`; each builds .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-12)

.PHONY: venv run test test-postgres faults check lint format schemas bench lock clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

run: venv ## start the hub on embedded defaults (broker, SQLite, sandbox agencies)
	$(BIN)/diasyndesi up

test: venv ## unit and integration tests (real embedded broker, real sandbox agencies)
	$(BIN)/pytest

# The same suite on a real PostgreSQL (a throw-away server from the machine's PostgreSQL 15
# binaries), then the fault scenarios that matter most there: the whole tree SIGKILLed,
# two `serve` processes sharing one database, PostgreSQL itself stopped under load.
PG_FAULTS := whole_tree or two_serves or postgres
test-postgres: venv ## the suite and the database fault scenarios on PostgreSQL
	$(BIN)/python -m tests.pgserver run -- sh -c '$(BIN)/pytest && \
	  $(BIN)/pytest tests/faults -q -m "faults or not faults" -k "$(PG_FAULTS)"'

faults: venv ## fault-injection scenarios against the real processes (issue 4; ~9 min)
	$(BIN)/pytest tests/faults -q -m "faults or not faults"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/diasyndesi schemas export --check

check: lint test ## the one gate: lint, types, schema drift, tests

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: venv
	$(BIN)/diasyndesi schemas export

bench: venv ## the hub as `make run` starts it against a bare pipeline, in one run (~2 min)
	$(BIN)/diasyndesi bench

lock: venv ## re-resolve requirements.lock from pyproject.toml
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
