"""The shared services of one app: built once in its lifespan (`running`), reached
through `services(request)`. No other code reads `app.state`.

Keys, caller-token verification and the API URL template are parsed by `create_app`
(`StartupConfig.load`), so a bad key or template fails start-up before anything opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from service import tracing
from service.access.audit_batch import AuditWriter
from service.background import cancel_and_wait
from service.config import Settings
from service.db import create_engine, create_sessionmaker
from service.events.outbox import CHANNEL as EVENTS_CHANNEL
from service.events.signal import EventSignal
from service.events.worker import DeliveryWorker
from service.idempotency.store import IdempotencyStore
from service.inbound.limits import NotifyGate
from service.inbound.writer import NotifyWriter
from service.installs.cache import CHANGES_CHANNEL, StoreCache
from service.installs.service import InstallService
from service.jobs.loop import LeasedJob
from service.jobs.retention import Retention, targets
from service.jobs.sweep import HealthSweep
from service.neto.apps import client_ids as apps_client_ids
from service.neto.http import create_http_client, create_session
from service.neto.upstream import UpstreamClient
from service.neto.urls import ApiUrlBuilder
from service.notifications import Listener
from service.oauth.throttle import AddressLimiter, address_rule
from service.replicas.heartbeat import Heartbeat
from service.security.callers import TokenVerifier
from service.security.crypto import KeyRing

log = logging.getLogger("broker")


@dataclass(frozen=True, slots=True)
class StartupConfig:
    """What is parsed from the settings before the app is built."""

    settings: Settings
    keyring: KeyRing
    verifier: TokenVerifier
    api_urls: ApiUrlBuilder

    @classmethod
    def load(cls, settings: Settings) -> StartupConfig:
        if settings.encryption_keys is None:
            raise ValueError("BROKER_ENCRYPTION_KEYS is not set")
        return cls(
            settings=settings,
            keyring=KeyRing.parse(settings.encryption_keys.get_secret_value()),
            verifier=TokenVerifier(settings),
            api_urls=ApiUrlBuilder(settings.neto_api_url_template),
        )


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    keyring: KeyRing
    verifier: TokenVerifier
    api_urls: ApiUrlBuilder
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    listener: Listener  # PostgreSQL LISTEN/NOTIFY; consumers subscribe before it starts
    http: httpx.AsyncClient  # httpx's API for the OAuth code exchange
    upstream: UpstreamClient  # the store API client (/invoke, verify)
    store_cache: StoreCache
    audit_writer: AuditWriter  # bundles' group-committed audit rows
    installs: InstallService
    jobs: list[LeasedJob]  # background jobs (service/jobs/), each under its own lease
    install_limiter: AddressLimiter  # requests per client address on /oauth/ routes
    heartbeat: Heartbeat | None  # divides each store's Neto budget among live replicas
    event_signal: EventSignal  # wakes this replica's waiting `GET /events` requests
    webhooks: DeliveryWorker  # this replica's webhook delivery worker
    idempotency: IdempotencyStore  # writes sent with an Idempotency-Key, and their answers
    notify_gate: NotifyGate  # bounds on /neto-notify/ per address and per store
    notify_writer: NotifyWriter  # batched token checks and group commit of notifications


@contextlib.asynccontextmanager
async def running(config: StartupConfig) -> AsyncIterator[Services]:
    """Open the database, the HTTP session and the background tasks; close them after."""
    settings = config.settings
    engine = create_engine(settings)
    if tracing.ENABLED:
        tracing.watch_engine(engine)
    sessionmaker = create_sessionmaker(engine)
    session = create_session(settings)
    upstream = UpstreamClient(session, config.api_urls, settings)
    # Each OAuth store's copy carries its own add-on's client id (service/neto/apps.py).
    client_ids = apps_client_ids(settings.apps)
    store_cache = StoreCache(
        sessionmaker,
        config.keyring,
        client_ids,
        poll_seconds=settings.store_cache_seconds,
        max_entries=settings.store_cache_max_entries,
        max_age_seconds=settings.store_cache_max_age_seconds,
    )
    installs = InstallService(sessionmaker, config.keyring, store_cache, upstream, client_ids)
    listener = Listener(settings.database_url)
    # PostgreSQL: another replica's install change drops this replica's copy on commit.
    listener.subscribe(CHANGES_CHANNEL, store_cache.invalidate)
    notify_writer = NotifyWriter(sessionmaker)
    services = Services(
        settings=settings,
        keyring=config.keyring,
        verifier=config.verifier,
        api_urls=config.api_urls,
        engine=engine,
        sessionmaker=sessionmaker,
        listener=listener,
        http=create_http_client(session, settings),
        upstream=upstream,
        store_cache=store_cache,
        audit_writer=AuditWriter(
            sessionmaker, sqlite_path=engine.url.database if settings.is_sqlite else None
        ),
        installs=installs,
        jobs=_jobs(settings, sessionmaker, installs, upstream),
        install_limiter=AddressLimiter(settings.install_rate_per_minute),
        heartbeat=(
            Heartbeat(sessionmaker, upstream.limits, settings.replica_heartbeat_seconds)
            if settings.replica_heartbeat_seconds > 0
            else None
        ),
        event_signal=EventSignal(),
        webhooks=DeliveryWorker(
            sessionmaker, config.keyring, settings, session,
            create_session(settings, allow_private=True) if settings.webhook_hosts else None,
            busy=notify_writer.busy,
        ),
        idempotency=IdempotencyStore(
            sessionmaker, config.keyring, ttl_hours=settings.idempotency_ttl_hours,
            wait_seconds=settings.upstream_deadline_seconds + settings.store_queue_seconds,
        ),
        notify_gate=NotifyGate(
            address_per_minute=settings.notify_address_rate_per_minute,
            refusals_per_minute=settings.notify_refusals_per_minute,
            store_per_minute=settings.notify_store_rate_per_minute,
            store_in_flight=settings.notify_store_in_flight,
        ),
        notify_writer=notify_writer,
    )  # fmt: skip
    for wake in (services.event_signal.fire, services.webhooks.wake):
        services.listener.subscribe(EVENTS_CHANNEL, wake)
        services.listener.on_reconnect(wake)
    await services.audit_writer.start()
    services.webhooks.start()
    services.notify_writer.start()
    await services.listener.start()
    try:
        await store_cache.start(preload=settings.store_cache_preload)
    except Exception:  # the database may be down at start; the cache then stays cold
        log.warning("store cache could not start; serving from the database")
    thresholds = gc.get_threshold()
    freezer = asyncio.create_task(_freeze_when_warm(store_cache), name="gc-freeze")
    if services.heartbeat is not None:
        await services.heartbeat.start()
    for job in services.jobs:
        job.start()
    # Behind an Ingress a wrong BROKER_TRUSTED_PROXIES makes every merchant one address
    # (or lets clients choose theirs): say at start which rule counts installs.
    log.info(
        "install limit counts client address by %s (BROKER_TRUSTED_PROXIES=%d)",
        address_rule(settings.trusted_proxies),
        settings.trusted_proxies,
        extra={"fields": {"client_address": address_rule(settings.trusted_proxies)}},
    )
    try:
        yield services
    finally:
        await cancel_and_wait(freezer)
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        for job in services.jobs:
            await job.stop()
        if services.heartbeat is not None:
            await services.heartbeat.stop()
        await services.listener.stop()
        await services.webhooks.stop()
        await services.notify_writer.stop()
        await store_cache.stop()
        await services.audit_writer.stop()
        await services.http.aclose()
        await engine.dispose()


def _jobs(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    installs: InstallService,
    upstream: UpstreamClient,
) -> list[LeasedJob]:
    """The background jobs the settings turn on."""
    jobs: list[LeasedJob] = []
    if settings.health_sweep_hours > 0:
        jobs.append(
            HealthSweep(
                sessionmaker, installs, upstream.limits, period_hours=settings.health_sweep_hours
            )
        )
    # Always: besides the tables' retentions, revoked installs' profiles are destroyed
    # once past theirs (at once without one: what an older replica's revoke left).
    jobs.append(
        Retention(sessionmaker, targets(settings), profiles=installs.forget_revoked_profiles)
    )
    return jobs


def services(conn: HTTPConnection) -> Services:
    """The app's services, for a route or dependency."""
    built: Services = conn.app.state.services
    return built


# The collector's thresholds once the cache is warm (`_freeze_when_warm`).
GC_THRESHOLDS = (7_000, 10, 100)


async def _freeze_when_warm(cache: StoreCache) -> None:
    """Once the store cache is warm, what the process built to serve (modules, the app,
    the cache) is long-lived: moved out of the collector's generations (`gc.freeze`), so a
    full collection walks only what requests create. Measured with 100,000 installs: full
    collections of 80-180 ms every second or two before, 11-17 ms after; they were the
    bundles' whole p99 (docs/performance.md). Undone when the services stop
    (`gc.unfreeze`), so a process that builds many apps (the tests) keeps nothing.

    And full collections become rarer: after the freeze CPython counts as long-lived only
    what requests left behind (~35,000 objects), and collects everything again whenever a
    quarter of that is new, every second or so under load, each a 10-35 ms pause (the
    bundles' p99). With gen0 at 7,000 allocations rather than 700 and a full collection
    at most every 100 gen1 collections rather than 10, one comes every ~15 s; what a
    request creates is still collected young."""
    await cache.warm.wait()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
