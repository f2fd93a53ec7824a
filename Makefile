# The README's commands. Each creates .venv on a fresh machine (Python 3.11+; the Debian
# packages it lacks are installed by scripts/system_packages.sh, or it says how).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
IMAGE ?= neto-token-broker:dev
BASE_IMAGE ?= python:3.11-slim-bookworm
# The legacy builder: it uses a locally imported base as it is and needs no BuildKit
# frontend from a registry. Host network: the build engine may have no bridge.
DOCKER_BUILD ?= DOCKER_BUILDKIT=0 docker build --network host
UV_VERSION := 0.13.9

.PHONY: run test test-packages demo bench openapi lint install install-test image image-test lock mutants client-wheel

$(BIN)/python:
	PYTHON=$(PYTHON) scripts/system_packages.sh run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]' -e ./client
	touch $@ $(VENV)/.installed

$(VENV)/.installed-mutants: pyproject.toml client/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,mutants]' -e ./client
	touch $@ $(VENV)/.installed-test $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## make run: the broker on http://localhost:8000 in development mode (embedded SQLite)
run: install
	mkdir -p var
	BROKER_ENV=development $(BIN)/broker migrate
	BROKER_ENV=development $(BIN)/broker serve --host $(HOST) --port $(PORT)

## make test: the whole suite on SQLite (and PostgreSQL when BROKER_TEST_DATABASE_URL is set)
test: test-packages install-test
	$(BIN)/python -m pytest

# Chromium and faketime for the suite (and python3-venv), from Debian, before anything else.
test-packages:
	@PYTHON=$(PYTHON) scripts/system_packages.sh test

## make lint: ruff and mypy
lint: install-test
	$(BIN)/ruff check service tests bench scripts alembic client
	$(BIN)/ruff format --check service tests bench scripts alembic client
	$(BIN)/mypy service
	$(BIN)/mypy --strict client/src

## make mutants: mutation testing of the security-critical modules on SQLite, two workers,
## each mutant running only its module's tests (docs/mutation.md); prints the survivors and
## the kill ratio last, and fails under 90 %. Not part of `make test`.
MUTANT_WORKERS ?= 2
mutants: $(VENV)/.installed-mutants
	rm -rf mutants && mkdir mutants
	@start=$$(date +%s); \
	  env -u BROKER_TEST_DATABASE_URL $(BIN)/mutmut run --max-children $(MUTANT_WORKERS) \
	    > mutants/run.log 2>&1 || { tr '\r' '\n' < mutants/run.log | tail -n 40; exit 1; }; \
	  echo "mutmut run: $$(( $$(date +%s) - start )) s"
	$(BIN)/python scripts/mutation_score.py --fail-under 90

## make client-wheel: the typed Python client (client/) as a wheel in dist/
client-wheel: | $(BIN)/python
	$(BIN)/python -m pip wheel -q --no-deps --wheel-dir dist ./client
	@ls dist/neto_broker_client-*.whl

## make openapi: regenerate openapi/openapi.json from the code (no environment needed)
openapi: install
	$(BIN)/python -m service.web.openapi_export openapi/openapi.json

## make demo: the broker on http://localhost:8000 wired to a local Neto emulator on :8001
demo: install
	$(BIN)/python scripts/demo.py

## make bench: hot paths beside their ceilings (see docs/performance.md)
bench: install-test
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.run

## make image: build the container image $(IMAGE) on BASE_IMAGE (default python:3.11-slim-bookworm;
## when that cannot be pulled, on a local Debian base that scripts/image_base.sh builds once)
image:
	base="$$(scripts/image_base.sh '$(BASE_IMAGE)')" && \
	  $(DOCKER_BUILD) --build-arg BASE_IMAGE="$$base" -t $(IMAGE) .
	@docker image inspect -f '$(IMAGE): {{.Size}} bytes' $(IMAGE)

## make image-test: build the image and run tests/image against containers of it (needs a
## Linux Docker engine; starts one if it can and none runs). CI=true: no Docker is a failure.
image-test: install-test
	scripts/image_test.sh

## make lock: rewrite requirements.lock (pinned, hashed) from pyproject.toml; UPGRADE=1 takes
## the newest versions the ranges allow
$(VENV)/.uv-$(UV_VERSION): | $(BIN)/python
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	touch $@

lock: $(VENV)/.uv-$(UV_VERSION)
	$(BIN)/python scripts/lock.py $(if $(UPGRADE),--upgrade)
