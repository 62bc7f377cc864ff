# One entry point: `make run`, `make test`, `make check`, `make bench`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(shell find protos -name '*.proto')
STAMP := $(VENV)/.installed

.PHONY: run test check lint typecheck buflint gen install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Generated stubs are build output: regenerated from protos/ whenever a .proto changes, never edited.
protos/.generated: $(STAMP) $(PROTOS)
	$(PY) -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos --grpc_python_out=protos $(PROTOS)
	for d in protos/booking protos/booking/v1 protos/notify protos/notify/v1; do touch $$d/__init__.py; done
	touch protos/.generated

gen: protos/.generated

# Starts the booking service; uses DATABASE_URL/REDIS_URL when they answer, else private servers under .local/.
run: gen
	$(PY) -m svc_common.devrun

test: gen
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: gen
	$(VENV)/bin/mypy

buflint: $(STAMP)
	cd protos && ../$(VENV)/bin/buf lint

check: lint typecheck buflint

clean:
	rm -rf $(VENV) .local protos/.generated
	find protos/booking protos/notify \( -name '*_pb2*.py*' -o -name '__init__.py' \) -delete
