"""`broker keys generate | rotate | check`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from service.cli.common import keyring_or_exit, keys_app, settings_or_exit, with_database


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


@keys_app.command("rotate")
def keys_rotate(
    batch_size: Annotated[
        int, typer.Option(min=1, max=5000, help="Installs re-sealed per transaction.")
    ] = 200,
) -> None:
    """Re-encrypt every stored secret under the primary key (the first of
    BROKER_ENCRYPTION_KEYS). Safe while the service serves traffic; running it again
    does nothing. Configure the new key first on every replica ("new:...,old:...")."""
    from service.errors import BrokerError
    from service.installs import rotation

    settings = settings_or_exit()
    keyring = keyring_or_exit(settings)
    with _progress_bar("re-sealing installs") as progress:
        try:
            report = asyncio.run(
                with_database(
                    settings,
                    lambda sm: rotation.rotate(
                        sm, keyring, batch_size=batch_size, progress=progress
                    ),
                )
            )
        except BrokerError as exc:
            typer.secho(f"rotation stopped: {exc.detail}", err=True, fg="red")
            raise typer.Exit(1) from None
    if report.total == 0 and report.ok:
        typer.echo(f"nothing to rotate: every sealed install is under key {report.primary!r}")
        return
    typer.echo(
        f"rotated {report.rotated} installs to key {report.primary!r} "
        f"({report.cleared} held nothing sealed; {report.changed_concurrently} changed "
        "concurrently and were left to their writer or re-read)"
    )
    for kid, count in sorted(report.missing_keys.items()):
        typer.secho(
            f"{count} installs are sealed under key {kid!r}, which is not configured: add it "
            "to BROKER_ENCRYPTION_KEYS (after the primary) and run this again",
            fg="red",
        )
    if report.damaged:
        typer.secho(
            f"{len(report.damaged)} installs could not be opened (tampered with or damaged): "
            + ", ".join(sorted(report.damaged)[:20]),
            fg="red",
        )
    if not report.ok:
        raise typer.Exit(1)


@keys_app.command("check")
def keys_check() -> None:
    """Say which keys the stored data needs. Fails when data is sealed under a key that
    is not configured, or when a configured key (not the primary) seals nothing."""
    from service.errors import BrokerError
    from service.installs import rotation

    settings = settings_or_exit()
    keyring = keyring_or_exit(settings)
    try:
        usage = asyncio.run(with_database(settings, lambda sm: rotation.key_usage(sm, keyring)))
    except BrokerError as exc:
        typer.secho(f"check failed: {exc.detail}", err=True, fg="red")
        raise typer.Exit(1) from None
    for kid in usage.configured:
        count = usage.counts.get(kid, 0)
        if kid == usage.primary:
            typer.echo(f"key {kid!r} (primary): seals {count} installs")
        elif count:
            typer.echo(
                f"key {kid!r}: seals {count} installs; still needed "
                "(run `broker keys rotate` to move them to the primary)"
            )
        else:
            typer.secho(f"key {kid!r} is unused; remove it from BROKER_ENCRYPTION_KEYS", fg="red")
    for unknown, count in usage.unknown.items():
        name = "no key id" if unknown is None else f"key {unknown!r}"
        typer.secho(
            f"{count} installs are sealed under {name}, which is not configured: they cannot "
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
