"""Write requirements.lock: every package the image installs, pinned, with its hashes.

`make lock` runs this. The inputs are pyproject.toml's `[project] dependencies` and its
`[build-system] requires` (the image builds the project with the locked setuptools, so
nothing unhashed is fetched). uv resolves them for CPython 3.11 on Linux, the image's
interpreter, whatever Python or platform runs this script: the lock does not depend on
the machine it was made on. Existing pins are kept unless an input needs another
version; `--upgrade` moves everything to the newest versions the inputs allow.

The lock's first line records a digest of the inputs. tests/deploy/test_lock.py
recomputes it and fails when pyproject.toml changed and the lock was not rewritten.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
# The image's interpreter and platform (Dockerfile: python:3.11-slim-bookworm).
PYTHON_VERSION = "3.11"
PYTHON_PLATFORM = "x86_64-manylinux_2_28"
COMMAND = "make lock"
DIGEST_PREFIX = "# inputs-sha256: "


def lock_inputs(pyproject: Path = PYPROJECT) -> dict[str, object]:
    """What the lock is resolved from; any change here means the lock must be rewritten."""
    data = tomllib.loads(pyproject.read_text())
    return {
        "dependencies": sorted(data["project"]["dependencies"]),
        "build-system": sorted(data["build-system"]["requires"]),
        "python": PYTHON_VERSION,
        "platform": PYTHON_PLATFORM,
    }


def inputs_digest(pyproject: Path = PYPROJECT) -> str:
    canonical = json.dumps(lock_inputs(pyproject), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def recorded_digest(lock: Path = LOCK) -> str | None:
    """The digest written on the lock's first line, or None when there is none."""
    if not lock.is_file():
        return None
    first = lock.read_text().splitlines()[:1]
    if first and first[0].startswith(DIGEST_PREFIX):
        return first[0].removeprefix(DIGEST_PREFIX).strip()
    return None


def uv_binary() -> str:
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if not found:
        sys.exit("uv not found: `make lock` installs it into .venv (pip install uv)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="newest allowed versions")
    args = parser.parse_args()
    build_requires = lock_inputs()["build-system"]
    assert isinstance(build_requires, list)
    # Drop the digest line so uv reads the old pins as preferences from a plain file.
    body = LOCK.read_text().split("\n", 1)[1] if recorded_digest() else None
    with tempfile.TemporaryDirectory() as tmp:
        # uv names each input file in its "# via" notes: a stable name, not a temp path.
        build_in = Path(tmp) / "build-system.requires"
        build_in.write_text("".join(f"{r}\n" for r in build_requires))
        out = Path(tmp) / "requirements.lock"
        if body is not None:
            out.write_text(body)
        command = [
            uv_binary(), "pip", "compile", "--quiet",
            "pyproject.toml", str(build_in),
            "--generate-hashes",
            "--python-version", PYTHON_VERSION,
            "--python-platform", PYTHON_PLATFORM,
            "--custom-compile-command", COMMAND,
            "--output-file", str(out),
        ]  # fmt: skip
        if args.upgrade:
            command.append("--upgrade")
        subprocess.run(command, cwd=ROOT, check=True)
        text = out.read_text().replace(str(build_in), build_in.name)
    LOCK.write_text(f"{DIGEST_PREFIX}{inputs_digest()}\n{text}")
    print(f"wrote {LOCK.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
