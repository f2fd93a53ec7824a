#!/usr/bin/env bash
# The Debian packages `make run` and `make test` need beyond Python 3.11, installed once
# from the machine's own apt sources (a no-op when they are there):
#   run:  python3-venv (Debian's python3 ships without the venv module's pip)
#   test: that, plus chromium (the Swagger UI browser tests drive Debian's Chromium),
#         libatomic1 (Playwright's bundled node driver links it; a minimal Debian lacks it)
#         and faketime (the skewed-clock replica tests run a broker with a shifted clock).
# As root it installs what is missing; otherwise it stops, before anything else runs, with
# the exact command to run. .ci/run gets them through `make test` too.
set -euo pipefail

what="${1:?usage: scripts/system_packages.sh run|test}"
python="${PYTHON:-python3}"
chromium="${BROKER_TEST_CHROMIUM:-/usr/bin/chromium}"

missing=()
"$python" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ "$what" = test ]; then
  [ -x "$chromium" ] || missing+=(chromium)
  dpkg-query -W -f='${Status}' libatomic1 2>/dev/null | grep -q 'ok installed' ||
    missing+=(libatomic1)
  command -v faketime >/dev/null || missing+=(faketime)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

install="apt-get install -y ${missing[*]}"
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "make $what needs these Debian packages: ${missing[*]}" >&2
  echo "install them, then run make $what again:  sudo $install" >&2
  exit 1
fi
echo "installing ${missing[*]} (once, for make $what)" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
