"""The tables replicas share: who is alive, and which stores Neto paused.

Neither holds a timestamp. Replicas' clocks may disagree, so liveness is a counter each
replica bumps on its heartbeat, judged by the *observer's* own monotonic clock (a row
whose counter stopped moving is dead), and a pause is a version and a length, applied
from when an observer first sees that version.
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
