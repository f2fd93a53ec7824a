"""A database fault injector the tests control, in the spirit of Vault's ErrorInjector.

It hooks the app's own engine through SQLAlchemy's `before_cursor_execute` event (no
production seam): while a rule is armed, every statement matching its pattern fails with
the driver's own OperationalError, exactly where a dropped connection or a failing disk
would surface, so the broker's real error handling runs.

The bundle audit batch on SQLite runs on a sqlite3 connection of its own
(service/access/audit_sqlite.py); there SQLite itself is made to fail: a trace callback
sees each statement start, and a progress handler interrupts a matching one
("interrupted", sqlite3's OperationalError).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    remaining: int | None


class DatabaseFaults:
    def __init__(self, engine: AsyncEngine, sqlite: sqlite3.Connection | None = None) -> None:
        self._engine = engine.sync_engine
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.refused: list[str] = []  # the statements that were made to fail
        event.listen(self._engine, "before_cursor_execute", self._before)
        self._sqlite = sqlite
        self._interrupt = False  # the statement running on `sqlite` is to fail
        if sqlite is not None:
            sqlite.set_trace_callback(self._traced)
            sqlite.set_progress_handler(lambda: self._interrupt, 1)

    def fail(self, pattern: str = r".", *, times: int | None = None) -> None:
        """Fail statements matching `pattern` (case-insensitive), `times` times or until
        `heal()`."""
        with self._lock:
            self._rules.append(_Rule(re.compile(pattern, re.IGNORECASE), times))

    def heal(self) -> None:
        with self._lock:
            self._rules.clear()

    def close(self) -> None:
        self.heal()
        event.remove(self._engine, "before_cursor_execute", self._before)
        if self._sqlite is not None:
            self._sqlite.set_trace_callback(None)
            self._sqlite.set_progress_handler(None, 1)

    def _matches(self, statement: str) -> bool:
        with self._lock:
            for rule in self._rules:
                if rule.pattern.search(statement) and rule.remaining != 0:
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    self.refused.append(statement)
                    return True
        return False

    def _traced(self, statement: str) -> None:
        self._interrupt = self._matches(statement.lstrip())

    def _before(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> tuple[str, Any]:
        if self._matches(statement):
            raise conn.dialect.loaded_dbapi.OperationalError(
                "injected fault: the database went away"
            )
        return statement, params
