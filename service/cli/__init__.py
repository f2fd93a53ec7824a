"""The `broker` command: serve, migrate, mint operator tokens, manage keys, list installs,
prune the audit log, manage webhook subscriptions, issue stores' notification URLs.

Each command group lives in its own module; importing them registers their commands."""

from __future__ import annotations

from service.cli import audit, installs, keys, notifications, server, tokens, webhooks
from service.cli.common import app

__all__ = [
    "app", "audit", "installs", "keys", "main", "notifications", "server", "tokens", "webhooks",
]  # fmt: skip


def main() -> None:
    app()


if __name__ == "__main__":
    main()
