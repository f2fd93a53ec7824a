"""`client/` is a package of its own: it builds into a wheel (as `make client-wheel`
does) holding every module and its type marker, and depends on httpx and pydantic only."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest

from tests.support import ROOT


@pytest.mark.slow
def test_the_client_builds_into_a_wheel_with_only_its_two_dependencies(tmp_path):
    source = tmp_path / "client"  # a copy: the build leaves build/ and egg-info behind
    shutil.copytree(ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir",
         str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = (tmp_path / "dist").glob("neto_broker_client-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(metadata).decode())
    modules = {p.name for p in (ROOT / "client/src/neto_broker_client").glob("*.py")}
    assert {f"neto_broker_client/{m}" for m in modules} <= names, sorted(names)
    assert "neto_broker_client/py.typed" in names, "type checkers would ignore the hints"
    assert meta["Name"] == "neto-broker-client"
    requires = {r.split(">")[0].split("=")[0].strip() for r in meta.get_all("Requires-Dist")}
    assert requires == {"httpx", "pydantic"}, requires
