"""The garbage collector on a serving replica (service/services.py `_freeze_when_warm`):
once the store cache is warm, what start-up built is frozen and full collections become
rare; when the services stop, both are undone, so a process that builds many apps (this
test suite) keeps nothing frozen and its own thresholds."""

from __future__ import annotations

import asyncio
import gc

from service.main import create_app
from service.services import GC_THRESHOLDS
from tests.conftest import truncate


async def test_a_warm_replica_freezes_start_up_and_collects_rarely_until_it_stops(
    settings, database_url
):
    before = gc.get_threshold()
    assert before != GC_THRESHOLDS  # the interpreter's own, as any process starts
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    try:
        await asyncio.wait_for(app.state.services.store_cache.warm.wait(), 10)
        for _ in range(200):  # the freezer runs right after the warm event
            if gc.get_freeze_count() > 0:
                break
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        await lifespan.__aexit__(None, None, None)
        await truncate(database_url)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
