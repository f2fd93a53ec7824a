"""How much of each growing id is left: read at scrape time for the
`broker_id_headroom_ratio` gauge, so an operator is warned long before an id runs out."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# (table, column) of every id that only grows; on PostgreSQL each has the sequence
# `{table}_{column}_seq`, except the installs' change numbers (`installs_change_seq`).
GROWING = (
    ("audit_events", "id"),
    ("pending_installs", "id"),
    ("webhook_deliveries", "id"),
    ("webhook_attempts", "id"),
    ("events", "seq"),
    ("installs", "change_seq"),
)
INT64_MAX = 2**63 - 1


def sequence_name(table: str, column: str) -> str:
    return "installs_change_seq" if table == "installs" else f"{table}_{column}_seq"


async def headroom(session: AsyncSession) -> dict[str, float]:
    """Sequence name -> the share of its range not yet used (1.0 untouched, 0.0 spent)."""
    names = {sequence_name(table, column) for table, column in GROWING}
    if session.get_bind().dialect.name == "postgresql":
        rows = await session.execute(
            text(
                "SELECT sequencename, COALESCE(last_value, min_value), min_value, max_value "
                "FROM pg_sequences WHERE schemaname = current_schema()"
            )
        )
        return {
            name: 1.0 - (last - low) / (high - low)
            for name, last, low, high in rows
            if name in names
        }
    # SQLite: an INTEGER PRIMARY KEY (and the change number) is a 64-bit integer; the
    # largest value in use is one index lookup.
    found = {}
    for table, column in GROWING:
        used = (await session.execute(text(f"SELECT MAX({column}) FROM {table}"))).scalar()  # noqa: S608
        found[sequence_name(table, column)] = 1.0 - (used or 0) / INT64_MAX
    return found
