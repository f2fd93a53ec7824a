"""Two real broker processes (`broker serve`) on one database, started once per backend.

They run with production settings from the environment, exactly as a deployment would:
explicit keys, the database migrated by `broker migrate`, Neto pointing at the loopback
fake in this test process. PostgreSQL runs when BROKER_TEST_DATABASE_URL is set (CI always
sets it); SQLite runs too, with both processes on one database file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from service.config import normalize_database_url
from service.security.crypto import generate_key
from tests import support
from tests.conftest import truncate
from tests.fakes.neto import FakeNetoServer
from tests.support import broker_env, free_port

# The replicas hold two keys: k2 seals, k1 (the previous key) still opens older rows.
OLD_KEY = f"k1:{generate_key()}"
NEW_KEY = f"k2:{generate_key()}"
STARTUP_SECONDS = 30


def broker_command(*args: str) -> list[str]:
    """The installed `broker` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("broker")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "service.cli", *args]


def replica_env(database_url: str, neto_url: str, **extra: str) -> dict[str, str]:
    """A replica process's environment: the test deployment with both rotation keys."""
    settings = {
        "BROKER_LOG_LEVEL": "WARNING",
        "BROKER_INSTALL_RATE_PER_MINUTE": "100000",  # every test request comes from loopback
        # Replica tests hammer single stores; the budget test sets its own.
        "BROKER_STORE_RATE_PER_MINUTE": "100000",
        **extra,
    }
    return broker_env(
        database_url=database_url,
        neto_url=neto_url,
        encryption_keys=f"{NEW_KEY},{OLD_KEY}",
        **settings,
    )


@dataclass
class Replica:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def log_tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        # The whole process group: under faketime the broker is faketime's child, and
        # signalling faketime alone would leave the broker running (and joining the next
        # test's database as a replica).
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # graceful: in-flight requests finish
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything the group left behind
        self.log.close()


def start_replica(
    name: str, env: dict[str, str], workdir: Path, prefix: tuple[str, ...] = ()
) -> Replica:
    """`prefix`: a command the broker runs under (e.g. faketime, for a shifted clock)."""
    port = free_port()
    log_path = workdir / f"replica-{name}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [*prefix, *broker_command("serve", "--host", "127.0.0.1", "--port", str(port))],
        env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    return Replica(name, f"http://127.0.0.1:{port}", process, log_path, log)


def wait_ready(replica: Replica) -> None:
    support.wait_ready(replica.url, lambda: replica.process.poll() is None, STARTUP_SECONDS,
                       replica.log_tail)  # fmt: skip


@dataclass
class Cluster:
    backend: str
    database_url: str
    a: Replica
    b: Replica
    env: dict[str, str]
    workdir: Path

    @property
    def replicas(self) -> tuple[Replica, Replica]:
        return self.a, self.b


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    neto_server: FakeNetoServer,
) -> Iterator[Cluster]:  # fmt: skip
    workdir = tmp_path_factory.mktemp(f"replicas-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir}/broker.db"
    else:
        if not os.environ.get("BROKER_TEST_DATABASE_URL"):
            pytest.skip("PostgreSQL replicas need BROKER_TEST_DATABASE_URL")
        url = normalize_database_url(os.environ["BROKER_TEST_DATABASE_URL"])
    env = replica_env(url, neto_server.url)
    migrated = subprocess.run(
        broker_command("migrate"), env=env, cwd=workdir, capture_output=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr.decode()
    asyncio.run(truncate(url))
    a = start_replica("a", env, workdir)
    b = start_replica("b", env, workdir)
    try:
        wait_ready(a)
        wait_ready(b)
        yield Cluster(request.param, url, a, b, env, workdir)
    finally:
        a.stop()
        b.stop()
        asyncio.run(truncate(url))
