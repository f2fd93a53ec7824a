"""The tables replicas share: who is alive, and which stores Neto paused.

Replicas' clocks may disagree, so liveness is a counter each replica bumps on its
heartbeat, judged by the *observer's* own monotonic clock (a row whose counter stopped
moving is dead). A pause is a version and a length, with the budget Neto's 429 taught
(`per_minute`) and when it began by the *database's* clock (`at`, epoch seconds; the
heartbeat reads the database's clock in the same statement), so a replica that starts
later knows how much of the pause is left and how far the budget has grown back. Rows
written by a release before learned budgets (no `at`) are applied from when an observer
first sees them, as before.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, String
from sqlmodel import Field, SQLModel


class Replica(SQLModel, table=True):
    __tablename__ = "broker_replicas"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    beat: int = Field(sa_column=Column(BigInteger(), nullable=False))


class StorePause(SQLModel, table=True):
    __tablename__ = "store_pauses"

    store_id: str = Field(sa_column=Column(String(64), primary_key=True))
    version: int = Field(sa_column=Column(BigInteger(), nullable=False))
    seconds: float = Field(sa_column=Column(Float(), nullable=False))
    per_minute: float | None = Field(default=None, sa_column=Column(Float(), nullable=True))
    at: float | None = Field(default=None, sa_column=Column(Float(), nullable=True))
