# Neto Token Broker image.
#
# Two stages so the runtime image carries only the virtualenv and the Alembic scripts:
# no pip cache, no source tree, no compiler (every runtime dependency ships a manylinux
# wheel). Build from the repository root:  docker build -t neto-token-broker .
# (`make image` does that, on a local Debian base when the default cannot be pulled.)
# No `# syntax=` line: BuildKit would pull that frontend from a registry, which an
# air-gapped build machine cannot reach.

# Both stages use the same base, pinned by tag: the venv copied between them points at
# this base's python3.11. An air-gapped build names its own mirrored copy of it (or any
# Debian bookworm with python3.11 and python3.11-venv):
#   docker build --build-arg BASE_IMAGE=registry.internal/python:3.11-slim-bookworm .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The venv lives at the same path in both stages, so its console scripts' shebangs
# (#!/opt/venv/bin/python) stay valid after the copy.
RUN python -m venv /opt/venv

WORKDIR /src
# Every dependency at the version and hash the lock records (`make lock` writes it from
# pyproject.toml): each build installs the same bytes, and a tampered or substituted
# file fails the hash check. --no-deps: the lock is the whole closure already.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock

# Then the project alone. --no-build-isolation builds it with the locked setuptools
# instead of fetching an unpinned one; --no-deps resolves nothing beyond the lock.
# README* because pyproject's `readme` points at it.
COPY pyproject.toml README* ./
COPY service ./service
RUN pip install --no-cache-dir --no-deps --no-build-isolation .


FROM ${BASE_IMAGE} AS runtime

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in Kubernetes, and the
# bytecode pip compiled at install time is already in the venv.
# PYTHONUNBUFFERED: log lines reach the container runtime as they are written.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BROKER_ENV=production

# A named account with a fixed numeric id: Kubernetes' runAsNonRoot can only verify a
# numeric USER, and the Helm chart pins runAsUser to the same 10001.
RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin broker

# `broker migrate` looks for alembic.ini and alembic/ in the working directory.
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY alembic.ini ./
COPY alembic ./alembic

USER 10001:10001

EXPOSE 8000

# The only writable path the process may need; everything else can be read-only
# (docker run --read-only, or readOnlyRootFilesystem with an emptyDir on /tmp).
VOLUME ["/tmp"]

# slim has no curl: ask /healthz with the interpreter that is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3).status == 200 else 1)"]

# Exec form, no shell in between: uvicorn is PID 1 and receives SIGTERM itself, stops
# accepting connections and lets in-flight requests finish (its graceful shutdown).
STOPSIGNAL SIGTERM
CMD ["broker", "serve", "--host", "0.0.0.0", "--port", "8000"]
