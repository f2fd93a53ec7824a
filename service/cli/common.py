"""What the `broker` commands share: the typer apps, settings and keys that fail with a
sentence instead of a traceback, and a database for one command's work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from service.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from service.security.crypto import KeyRing

T = TypeVar("T")


@contextmanager
def database_errors(doing: str) -> Iterator[None]:
    """A database that cannot be reached (or is not migrated) ends the command with a
    sentence that says what to check, not a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        typer.secho(
            f"cannot {doing} ({type(exc).__name__}): is BROKER_DATABASE_URL reachable "
            "and migrated (`broker migrate`)?",
            err=True,
            fg="red",
        )
        raise typer.Exit(1) from None


app = typer.Typer(help="Neto Token Broker.", no_args_is_help=True, add_completion=False)
token_app = typer.Typer(help="Caller tokens.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys.", no_args_is_help=True)
installs_app = typer.Typer(help="Installs.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhook subscriptions.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(keys_app, name="keys")
app.add_typer(installs_app, name="installs")
app.add_typer(audit_app, name="audit")
app.add_typer(webhooks_app, name="webhooks")


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except (ConfigError, ValueError) as exc:
        # pydantic wraps validator errors; show the sentence, not a traceback.
        message = str(exc).splitlines()
        typer.secho(f"configuration error: {' '.join(m.strip() for m in message)}", err=True,
                    fg="red")  # fmt: skip
        raise typer.Exit(2) from None


def alembic_dir() -> Path:
    """Migrations ship beside the package in a checkout, or in the working folder."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / "alembic.ini").exists() and (base / "alembic").is_dir():
            return base
    typer.secho("alembic.ini and alembic/ not found here or beside the package", err=True)
    raise typer.Exit(2)


def keyring_or_exit(settings: Settings) -> KeyRing:
    from service.security.crypto import KeyConfigError, KeyRing

    try:
        return KeyRing.parse(
            settings.encryption_keys.get_secret_value() if settings.encryption_keys else ""
        )
    except KeyConfigError as exc:
        typer.secho(f"configuration error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None


async def with_database(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from service.db import create_engine, create_sessionmaker

    engine = create_engine(settings)
    try:
        return await work(create_sessionmaker(engine))
    finally:
        await engine.dispose()
