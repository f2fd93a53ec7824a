"""End-to-end fixtures: the broker as a real `broker serve` process on a loopback port."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.config import Settings
from tests.conftest import truncate
from tests.support import broker_env, free_port, wait_ready


@dataclass
class BrokerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def broker_server(
    settings: Settings, database_url: str, tmp_path: Path
) -> Iterator[Callable[..., BrokerProcess]]:
    """start(workers=1, **env) runs `broker serve` and waits until /readyz answers 200."""
    started: list[BrokerProcess] = []

    def start(workers: int = 1, **extra_env: str) -> BrokerProcess:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        neto_url = settings.neto_oauth_url.removesuffix("/oauth/v2")
        env = broker_env(
            database_url=settings.database_url, neto_url=neto_url, public_url=url, **extra_env
        )
        log = tmp_path / f"broker-{port}.log"
        broker = str(Path(sys.executable).with_name("broker"))
        with log.open("wb") as out:
            process = subprocess.Popen(
                [broker, "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--workers", str(workers)],
                env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        server = BrokerProcess(url, process, log)
        started.append(server)
        wait_ready(url, lambda: process.poll() is None, 30, server.output)
        return server

    yield start
    for server in started:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    import asyncio

    asyncio.run(truncate(database_url))
