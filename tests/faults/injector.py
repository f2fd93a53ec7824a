"""A database fault injector the tests control, in the spirit of Vault's ErrorInjector.

It hooks the app's own engine through SQLAlchemy's `before_cursor_execute` event (no
production seam): while a rule is armed, every statement matching its pattern fails with
the driver's own OperationalError, exactly where a dropped connection or a failing disk
would surface, so the broker's real error handling runs.
"""

from __future__ import annotations

import re
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
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.sync_engine
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.refused: list[str] = []  # the statements that were made to fail
        event.listen(self._engine, "before_cursor_execute", self._before)

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

    def _before(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> tuple[str, Any]:
        with self._lock:
            for rule in self._rules:
                if rule.pattern.search(statement) and rule.remaining != 0:
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    self.refused.append(statement)
                    raise conn.dialect.loaded_dbapi.OperationalError(
                        "injected fault: the database went away"
                    )
        return statement, params
