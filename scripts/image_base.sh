#!/usr/bin/env bash
# Prints the base image to build the broker's image on (the Dockerfile's BASE_IMAGE).
#
#   scripts/image_base.sh [BASE]      BASE defaults to python:3.11-slim-bookworm
#   scripts/image_base.sh --mirror    print the Debian mirror a local base would use
#
# BASE is used when the engine already has it or can pull it. When the default base
# cannot be pulled (no route to a registry of base images, as on an air-gapped build
# machine), a local base is built from Debian's own packages instead: debootstrap of
# bookworm with Python 3.11, imported as $LOCAL_BASE. Its tag is the cache: a second
# run finds it and skips debootstrap. The root filesystem lives in a temporary folder
# outside the repository and is deleted after the import.
#
# The Debian mirror is DEBIAN_MIRROR if set, otherwise the one this machine's own apt
# uses for bookworm (a `deb` line in /etc/apt/sources.list or sources.list.d/*.list, or
# a deb822 stanza's `URIs:` in sources.list.d/*.sources; failing that, a deb822 source
# signed by Debian's archive key for another release: the same mirror serves bookworm).
# No host is written here: a machine that may only reach its organisation's mirror
# already names it in its apt sources. None found: the script fails and says so.
# APT_ETC (default /etc/apt) is where the sources are read from.
#
# Only the base's name goes to stdout; progress goes to stderr.
set -euo pipefail

DEFAULT_BASE=python:3.11-slim-bookworm
BASE=${1:-$DEFAULT_BASE}
LOCAL_BASE=${LOCAL_BASE:-neto-token-broker-base:bookworm-python3.11}
APT_ETC=${APT_ETC:-/etc/apt}

log() { printf 'image-base: %s\n' "$*" >&2; }

# "<rank> <uri>" for each usable apt source of this machine, in file order: rank 0 lists
# the bookworm suite itself, rank 1 is a deb822 source signed by Debian's archive key for
# another (non-security, non-updates) suite. Only http(s) and file mirrors are usable.
apt_sources() {
  local f
  for f in "$APT_ETC/sources.list" "$APT_ETC"/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    # One line each: deb [options] uri suite component...
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" |
      awk '$1 == "deb" && NF >= 3 && $3 == "bookworm" && $2 ~ /^(https?|file):/ { print 0, $2 }'
  done
  for f in "$APT_ETC"/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk '
      function flush(   n, s, i, rank, m, u, j) {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && uris != "" && tolower(enabled) != "no") {
          n = split(suites, s, /[ \t]+/); rank = 9
          for (i = 1; i <= n; i++) {
            if (s[i] == "bookworm") rank = 0
            else if (rank > 1 && s[i] !~ /-/ && signed ~ /debian-archive-keyring/) rank = 1
          }
          if (rank <= 1) {
            m = split(uris, u, /[ \t]+/)
            for (j = 1; j <= m; j++) if (u[j] ~ /^(https?|file):/) print rank, u[j]
          }
        }
        types = uris = suites = enabled = signed = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { next }  # a continuation line (an inline key of Signed-By)
      {
        key = tolower(substr($0, 1, index($0, ":") - 1)); val = substr($0, index($0, ":") + 1)
        gsub(/^[ \t]+|[ \t]+$/, "", val)
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "enabled") enabled = val
        else if (key == "signed-by") signed = val
      }
      END { flush() }
    ' "$f"
  done
}

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local found
  found=$(apt_sources | sort -s -n -k1,1 | awk 'NR == 1 { print $2 }')
  if [ -z "$found" ]; then
    log "no Debian mirror for bookworm: this machine's apt sources ($APT_ETC/sources.list," \
      "sources.list.d/*.list, sources.list.d/*.sources) name none; set DEBIAN_MIRROR to the" \
      "URL of a Debian archive mirror this machine may reach (docs/deploy.md)"
    return 1
  fi
  echo "$found"
}

if [ "${1:-}" = "--mirror" ]; then
  debian_mirror
  exit
fi

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

mirror=$(debian_mirror)
log "$BASE cannot be pulled; building $LOCAL_BASE from Debian's packages ($mirror)"
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
  bookworm "$rootfs" "$mirror" >&2
# pip in the build stage must trust what this machine trusts to reach the package index
# (a machine behind a TLS-inspecting proxy adds its own CA to this bundle).
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
# The downloaded .debs and package lists are not needed in an image.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import - "$LOCAL_BASE" >/dev/null
log "built $LOCAL_BASE in $((SECONDS - started)) s"
echo "$LOCAL_BASE"
