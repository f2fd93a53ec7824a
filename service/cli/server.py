"""`broker serve` and `broker migrate`."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Annotated

import typer

from service.cli.common import alembic_dir, app, settings_or_exit
from service.cli.tokens import mint_or_exit
from service.config import Settings

OPERATOR_SCOPES = "installs:admin credentials:read invoke"


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    banner: Annotated[
        bool, typer.Option(help="In development: print the /docs URL and an operator token.")
    ] = True,
) -> None:
    """Run the API with uvicorn (ASGI app service.main:app). With --workers N, /metrics
    on any worker reports the sum over all workers. In development it first prints where
    Swagger UI is and a ready operator token, so a first try needs no other command."""
    from service.web import logs

    settings = settings_or_exit()
    logs.configure(settings.log_level)
    if banner and settings.env == "development":
        # Flushed now: uvicorn's logs follow, and a piped stdout would hold it back.
        typer.echo(development_banner(settings, host, port))
        sys.stdout.flush()
    # Several workers: each counts in its own memory, so a scrape would see one worker.
    # prometheus_client's multiprocess mode shares the values through files in this
    # directory (set before the workers start; emptied per run). An operator-set
    # PROMETHEUS_MULTIPROC_DIR is used as given and must start empty.
    own_metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = tempfile.mkdtemp(prefix="broker-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    try:
        _run_uvicorn(host, port, workers)
    finally:
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def development_banner(settings: Settings, host: str, port: int) -> str:
    """Where to click and a token to paste: development keys are throw-away, so printing
    a token signed with them is safe, and it saves a first user finding `token mint`."""
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host  # noqa: S104
    base = f"http://{shown}:{port}"
    token = mint_or_exit(settings, sub="dev-operator", scope=OPERATOR_SCOPES, stores=["*"],
                         actions=["*"], ttl_seconds=8 * 3600)  # fmt: skip
    return DEV_BANNER.format(base=base, token=token)


DEV_BANNER = """
 Neto Token Broker (development) on {base}
   Swagger UI: {base}/docs  (press Authorize, paste the token)
   Operator token, 8 h, every store and action (mint more with
   `BROKER_ENV=development .venv/bin/broker token mint --help`):
TOKEN={token}
"""


def _run_uvicorn(host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "service.main:app",
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        # The broker never uses the client's address (callers are identified by their
        # token), so X-Forwarded-* parsing would be work on every request for nothing.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=30,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
    )


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply Alembic migrations to BROKER_DATABASE_URL."""
    from alembic import command
    from alembic.config import Config

    from service.config import DatabaseSettings

    base = alembic_dir()
    url = DatabaseSettings().database_url
    cfg = Config(str(base / "alembic.ini"))
    cfg.set_main_option("script_location", str(base / "alembic"))
    cfg.attributes["database_url"] = url
    command.upgrade(cfg, revision)
    typer.echo(f"database is at {revision}")
