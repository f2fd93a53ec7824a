"""requirements.lock, from which the image installs, stays in step with pyproject.toml:
every dependency pinned within its range and hashed, and a digest of the lock's inputs
that changes whenever pyproject.toml's dependencies do. The fix is always `make lock`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.lock import (
    LOCK,
    PYPROJECT,
    PYTHON_VERSION,
    inputs_digest,
    lock_inputs,
    recorded_digest,
)

FIX = "run `make lock` and commit requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][\w.-]*)==(\S+)")
# The image's interpreter, for evaluating environment markers.
IMAGE_ENV = {"python_version": PYTHON_VERSION, "sys_platform": "linux",
             "platform_system": "Linux", "platform_python_implementation": "CPython",
             "implementation_name": "cpython"}  # fmt: skip


def pins(lock: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, the requirement's lines) for each pin in the lock."""
    found: dict[str, tuple[str, list[str]]] = {}
    current: list[str] = []
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = [line]
            found[canonicalize_name(match[1])] = (match[2], current)
        elif line.startswith("    ") and current:
            current.append(line)
    return found


def test_lock_exists_and_records_the_digest_of_its_inputs() -> None:
    assert LOCK.is_file(), f"no {LOCK.name}: {FIX}"
    assert recorded_digest() == inputs_digest(), (
        f"{LOCK.name} is out of step with pyproject.toml's dependencies: {FIX}"
    )


def test_every_dependency_is_pinned_within_its_range() -> None:
    locked = pins()
    inputs = lock_inputs()
    for spec in [*inputs["dependencies"], *inputs["build-system"]]:  # type: ignore[misc]
        requirement = Requirement(spec)
        if requirement.marker and not requirement.marker.evaluate(IMAGE_ENV):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in {LOCK.name}: {FIX}"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{LOCK.name} pins {name}=={version}, outside {spec!r}: {FIX}"
        )


def test_every_pin_is_exact_and_hashed() -> None:
    locked = pins()
    assert len(locked) > 20, f"{LOCK.name} holds only {sorted(locked)}"
    for name, (_, lines) in locked.items():
        hashes = [line for line in lines if "--hash=sha256:" in line]
        assert hashes, f"{name} has no hash in {LOCK.name}: {FIX}"
    # Anything but pins, their hashes and comments would escape --require-hashes.
    for line in LOCK.read_text().splitlines():
        stripped = line.strip()
        assert not stripped or stripped.startswith(("#", "--hash=")) or PIN.match(line), line


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"httpx>=0.27",', '"httpx>=0.27",\n    "orjson>=3.10",'),  # a dependency added
        ('"httpx>=0.27"', '"httpx>=0.28"'),  # a range moved
        ('"setuptools>=69"', '"setuptools>=75"'),  # the build backend's range moved
    ],
)
def test_a_changed_dependency_is_caught_as_drift(tmp_path: Path, old: str, new: str) -> None:
    # Proves the digest check above can fail: the same comparison on an edited copy.
    edited = tmp_path / "pyproject.toml"
    text = PYPROJECT.read_text()
    assert old in text, f"pyproject.toml no longer holds {old!r}: update this test"
    edited.write_text(text.replace(old, new, 1))
    assert inputs_digest(edited) != recorded_digest()
    # An edit that leaves the dependencies alone is not drift.
    shutil.copy(PYPROJECT, edited)
    edited.write_text(edited.read_text().replace('version = "0.1.0"', 'version = "0.1.1"'))
    assert inputs_digest(edited) == recorded_digest()
