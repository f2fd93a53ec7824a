from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.injector import DatabaseFaults


@pytest.fixture
def db_faults(app: Any) -> Iterator[DatabaseFaults]:
    audit = app.state.services.audit_writer.sqlite
    faults = DatabaseFaults(app.state.services.engine, audit.connection if audit else None)
    yield faults
    faults.close()
