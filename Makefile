# The README's commands. Everything runs from the project's own virtualenv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTOS := $(shell find protos -name '*.proto')
# xds-protos ships a stale copy of opentelemetry.proto (grpc/grpc#42926); the real one
# must be installed last.
OTEL_PROTO = $$($(BIN)/python -c "import importlib.metadata as m; print(m.version('opentelemetry-proto'))")

.PHONY: install proto proto-check lint test test-unit test-e2e demo bench bench-datapath bench-tracing bench-mtls bench-service-mtls bench-identity bench-scale clean

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --force-reinstall --no-deps "opentelemetry-proto==$(OTEL_PROTO)"
	touch $@

proto: install
	$(BIN)/python -m control._protogen --out .

proto-check: install
	$(BIN)/python -m control._protogen --check

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint

# Two workers, a test file each at a time (its module-scoped meshes stay in one worker): most
# tests wait on real processes, so two run in about half the time on a 2-core machine.
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

# make demo ARGS="--once --no-tls": options of python -m mesh_demo (--help lists them).
ARGS ?=
demo: install
	$(BIN)/python -m mesh_demo $(ARGS)

bench: install
	$(BIN)/python -m bench

bench-datapath: install
	$(BIN)/python -m bench --only datapath

bench-tracing: install
	$(BIN)/python -m bench --only tracing

# mTLS on the agent link, then between services (both sections, side by side).
bench-mtls: install
	$(BIN)/python -m bench --only mtls --only service_mtls

bench-service-mtls: install
	$(BIN)/python -m bench --only service_mtls

bench-identity: install
	$(BIN)/python -m bench --only identity

# Ends with one JSON line per mode (sotw, delta), after the run's JSON summary.
NODES ?= 1000
bench-scale: install
	MESH_BENCH_SCALE_LAST=1 $(BIN)/python -m bench --only scale --sizes $(NODES)

clean:
	rm -rf $(VENV) .demo .bench
