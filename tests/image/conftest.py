"""Fixtures for the image tests: containers of the built image, run the way production
runs it (non-root, read-only root filesystem, only /tmp writable), on the host network so
every connection stays on loopback: the local PostgreSQL (a database of its own) and the
fake of Neto.

`make image-test` builds the image and sets BROKER_IMAGE; without it (a plain `make test`)
these tests are skipped with that reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from service.config import normalize_database_url
from tests.conftest import CLIENT_ID, CLIENT_SECRET, ENC_KEY, HS_KID, HS_SECRET
from tests.fakes.neto import FakeNetoServer
from tests.support import free_port, reset_database, wait_ready

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/broker_image"
# The one writable path inside the container (a tmpfs), as in the Helm chart.
TMP = "/tmp"  # noqa: S108
# Flags every container gets: production's restrictions, and loopback-only networking.
RUN_FLAGS = ["--network", "host", "--read-only", "--tmpfs", TMP, "--label", "broker-image-test"]
READY_SECONDS = 60


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args[:2])} exited {result.returncode}:\n{result.stderr}")
    return result


def env_flags(env: dict[str, str]) -> list[str]:
    return [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]


@pytest.fixture(scope="session")
def image() -> str:
    name = os.environ.get("BROKER_IMAGE")
    if not name:
        pytest.skip(
            "no image to test: `make image-test` builds one and runs these tests against it "
            "(needs a Linux Docker engine; CI runs it before this suite)"
        )
    found = docker("image", "inspect", name, check=False)
    if found.returncode != 0:
        pytest.fail(f"BROKER_IMAGE={name} is not an image the Docker engine has:\n{found.stderr}")
    return name


async def _create_database(url: str) -> None:
    name = make_url(url).database
    admin = create_async_engine(
        make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    async with admin.connect() as conn:
        exists = await conn.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
        )
        if not exists:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()


@pytest.fixture(scope="session")
def image_database_url(image: str) -> str:
    """The image tests' own PostgreSQL database, created if missing and emptied."""
    url = normalize_database_url(os.environ.get("BROKER_IMAGE_DATABASE_URL", DEFAULT_DATABASE_URL))
    name = make_url(url).database
    assert name and name != "test", f"the image tests need a database of their own, not {name!r}"
    asyncio.run(_create_database(url))
    asyncio.run(reset_database(url))
    return url


@pytest.fixture(scope="session")
def container_env(image_database_url: str, neto_server: FakeNetoServer) -> dict[str, str]:
    """Production settings (BROKER_ENV=production is the image's default) pointed at
    loopback: the image database and the fake of Neto."""
    return {
        "BROKER_DATABASE_URL": image_database_url,
        "BROKER_ENCRYPTION_KEYS": f"k1:{ENC_KEY}",
        "BROKER_JWT_HS256_KEYS": f"{HS_KID}:{HS_SECRET}",
        "BROKER_NETO_CLIENT_ID": CLIENT_ID,
        "BROKER_NETO_CLIENT_SECRET": CLIENT_SECRET,
        "BROKER_NETO_OAUTH_URL": f"{neto_server.url}/oauth/v2",
        "BROKER_NETO_API_URL_TEMPLATE": f"{neto_server.url}/{{store_domain}}/do/WS/NetoAPI",
        "BROKER_EGRESS_ALLOW_PRIVATE": "true",
    }


@pytest.fixture(scope="session")
def migrated(image: str, container_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`broker migrate` in a container of the image (the Helm chart's migration Job)."""
    result = docker("run", "--rm", *RUN_FLAGS, *env_flags(container_env), image,
                    "broker", "migrate", check=False, timeout=180)  # fmt: skip
    assert result.returncode == 0, f"broker migrate failed:\n{result.stdout}\n{result.stderr}"
    return result


@dataclass
class Container:
    name: str
    url: str

    def logs(self) -> str:
        result = docker("logs", "--tail", "60", self.name, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict[str, Any]:
        import json

        return dict(json.loads(docker("inspect", "-f", "{{json .State}}", self.name).stdout))

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return docker("exec", self.name, *command, check=False)


@pytest.fixture(scope="session")
def serve(
    image: str, container_env: dict[str, str], migrated: Any
) -> Iterator[Callable[[], Container]]:
    """start() runs `broker serve` in a new container on a free loopback port and waits
    until /readyz answers 200. Containers are removed at the end of the session."""
    names: list[str] = []

    def start() -> Container:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        name = f"broker-image-test-{secrets.token_hex(4)}"
        env = {**container_env, "BROKER_PUBLIC_URL": url}
        docker("run", "--detach", "--name", name, *RUN_FLAGS, *env_flags(env), image,
               "broker", "serve", "--host", "127.0.0.1", "--port", str(port))  # fmt: skip
        names.append(name)
        container = Container(name, url)
        wait_ready(url, lambda: bool(container.state()["Running"]), READY_SECONDS,
                   container.logs)  # fmt: skip
        return container

    yield start
    for name in names:
        docker("rm", "--force", name, check=False)


@pytest.fixture(scope="session")
def broker(serve: Callable[[], Container]) -> Container:
    """One serving container shared by the tests that only send it requests."""
    return serve()
