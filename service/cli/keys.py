"""`broker keys generate | rotate | check`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from service.cli.common import keyring_or_exit, keys_app, settings_or_exit, with_database

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from service.keys.rotation import RotationReport, SealedTable


@keys_app.command("generate")
def keys_generate(
    kid: Annotated[str | None, typer.Option(help="Key id (default: k + date).")] = None,
) -> None:
    """Print a new kid:key pair for BROKER_ENCRYPTION_KEYS."""
    from datetime import UTC, datetime

    from service.security.crypto import KID_RE, generate_key

    kid = kid or "k" + datetime.now(UTC).strftime("%Y%m%d%H%M")
    if not KID_RE.match(kid):
        raise typer.BadParameter("letters, digits, '_' or '-', at most 32")
    typer.echo(f"{kid}:{generate_key()}")


def _sealed_tables() -> tuple[SealedTable, ...]:
    """Every table with sealed columns: a key is needed while any of them uses it."""
    from service.events import subscriptions
    from service.idempotency import store
    from service.installs import sealing

    return (sealing.ROTATION, subscriptions.ROTATION, store.ROTATION)


@keys_app.command("rotate")
def keys_rotate(
    batch_size: Annotated[
        int, typer.Option(min=1, max=5000, help="Rows re-sealed per transaction.")
    ] = 200,
) -> None:
    """Re-encrypt every stored secret (installs, webhook signing secrets, idempotent
    answers) under the primary key (the first of BROKER_ENCRYPTION_KEYS). Safe while the
    service serves traffic; running it again does nothing. Configure the new key first on
    every replica ("new:...,old:...")."""
    from service.errors import BrokerError
    from service.keys import rotation

    settings = settings_or_exit()
    keyring = keyring_or_exit(settings)

    async def run(sessionmaker: async_sessionmaker[AsyncSession]) -> list[RotationReport]:
        reports = []
        for table in _sealed_tables():
            with _progress_bar(f"re-sealing {table.noun}") as progress:
                reports.append(
                    await rotation.rotate(
                        sessionmaker, keyring, table, batch_size=batch_size, progress=progress
                    )
                )
        return reports

    try:
        reports = asyncio.run(with_database(settings, run))
    except BrokerError as exc:
        typer.secho(f"rotation stopped: {exc.detail}", err=True, fg="red")
        raise typer.Exit(1) from None
    if all(report.total == 0 and report.ok for report in reports):
        typer.echo(f"nothing to rotate: everything sealed is under key {keyring.primary!r}")
        return
    for report in reports:
        if report.total or not report.ok:  # a table with nothing to do says nothing
            _say_rotated(report)
    if not all(report.ok for report in reports):
        raise typer.Exit(1)


def _say_rotated(report: RotationReport) -> None:
    noun = report.noun
    typer.echo(
        f"rotated {report.rotated} {noun} to key {report.primary!r} "
        f"({report.cleared} held nothing sealed; {report.changed_concurrently} changed "
        "concurrently and were left to their writer or re-read)"
    )
    for kid, count in sorted(report.missing_keys.items()):
        typer.secho(
            f"{count} {noun} are sealed under key {kid!r}, which is not configured: add it "
            "to BROKER_ENCRYPTION_KEYS (after the primary) and run this again",
            fg="red",
        )
    if report.damaged:
        typer.secho(
            f"{len(report.damaged)} {noun} could not be opened (tampered with or damaged): "
            + ", ".join(sorted(report.damaged)[:20]),
            fg="red",
        )


@keys_app.command("check")
def keys_check() -> None:
    """Say which keys the stored data (installs, webhook signing secrets, idempotent
    answers) needs. Fails
    when data is sealed under a key that is not configured, or when a configured key (not
    the primary) seals nothing."""
    from service.errors import BrokerError
    from service.keys import rotation

    settings = settings_or_exit()
    keyring = keyring_or_exit(settings)
    tables = _sealed_tables()
    try:
        usage = asyncio.run(
            with_database(settings, lambda sm: rotation.key_usage(sm, keyring, tables))
        )
    except BrokerError as exc:
        typer.secho(f"check failed: {exc.detail}", err=True, fg="red")
        raise typer.Exit(1) from None
    for kid in usage.configured:
        sealed = usage.sealed_by(kid)
        counts = [f"{count} {noun}" for noun, count in sealed.items()]
        seals = " and ".join([", ".join(counts[:-1]), counts[-1]] if len(counts) > 1 else counts)
        if kid == usage.primary:
            typer.echo(f"key {kid!r} (primary): seals {seals}")
        elif any(sealed.values()):
            typer.echo(
                f"key {kid!r}: seals {seals}; still needed "
                "(run `broker keys rotate` to move them to the primary)"
            )
        else:
            typer.secho(f"key {kid!r} is unused; remove it from BROKER_ENCRYPTION_KEYS", fg="red")
    for (noun, unknown), count in usage.unknown.items():
        name = "no key id" if unknown is None else f"key {unknown!r}"
        typer.secho(
            f"{count} {noun} are sealed under {name}, which is not configured: they cannot "
            "be opened until that key is added back to BROKER_ENCRYPTION_KEYS",
            fg="red",
        )
    if not usage.ok:
        raise typer.Exit(1)
    typer.echo("keys ok")


@contextmanager
def _progress_bar(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal; nothing when the output is piped or logged."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
