from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.injector import DatabaseFaults


@pytest.fixture
def db_faults(app: Any) -> Iterator[DatabaseFaults]:
    faults = DatabaseFaults(app.state.services.engine)
    yield faults
    faults.close()
