#!/usr/bin/env bash
# Prints the base image to build the broker's image on (the Dockerfile's BASE_IMAGE).
#
#   scripts/image_base.sh [BASE]      BASE defaults to python:3.11-slim-bookworm
#
# BASE is used when the engine already has it or can pull it. When the default base
# cannot be pulled (no route to a registry of base images, as on an air-gapped build
# machine), a local base is built from Debian's own packages instead: debootstrap of
# bookworm with Python 3.11, imported as $LOCAL_BASE. Its tag is the cache: a second
# run finds it and skips debootstrap. The root filesystem lives in a temporary folder
# outside the repository and is deleted after the import.
#
# Only the base's name goes to stdout; progress goes to stderr.
set -euo pipefail

DEFAULT_BASE=python:3.11-slim-bookworm
BASE=${1:-$DEFAULT_BASE}
LOCAL_BASE=${LOCAL_BASE:-neto-token-broker-base:bookworm-python3.11}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf 'image-base: %s\n' "$*" >&2; }

if docker image inspect "$BASE" >/dev/null 2>&1; then
  log "using $BASE (already present)"
  echo "$BASE"
  exit 0
fi
if docker pull -q "$BASE" >/dev/null 2>&1; then
  log "using $BASE (pulled)"
  echo "$BASE"
  exit 0
fi
if [ "$BASE" != "$DEFAULT_BASE" ]; then
  log "cannot find or pull $BASE"
  exit 1
fi
if docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
  log "$BASE cannot be pulled; using the cached local base $LOCAL_BASE"
  echo "$LOCAL_BASE"
  exit 0
fi

log "$BASE cannot be pulled; building $LOCAL_BASE from Debian's packages"
command -v debootstrap >/dev/null ||
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap) >&2
rootfs=$(mktemp -d /var/tmp/broker-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
started=$SECONDS
# minbase: essential packages only. python3.11-venv brings ensurepip (pip inside the
# venv; python3-distutils is its dependency, named because debootstrap resolves no
# virtual package); python-is-python3 gives the `python` the Dockerfile calls.
debootstrap --variant=minbase \
  --include=python3.11,python3.11-venv,python3-distutils,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$DEBIAN_MIRROR" >&2
# pip in the build stage must trust what this machine trusts to reach the package index
# (a machine behind a TLS-inspecting proxy adds its own CA to this bundle).
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
# The downloaded .debs and package lists are not needed in an image.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import - "$LOCAL_BASE" >/dev/null
log "built $LOCAL_BASE in $((SECONDS - started)) s"
echo "$LOCAL_BASE"
