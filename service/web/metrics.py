"""Prometheus metrics. Label values are route templates and fixed names, never ids.

With several worker processes (`broker serve --workers N`) each worker counts in its own
memory, so one scrape would see one worker. `broker serve` therefore runs the workers in
prometheus_client's multiprocess mode: PROMETHEUS_MULTIPROC_DIR (set before the workers
start) holds every worker's values and a scrape of any worker reports their sum.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "broker_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
LATENCY = Histogram(
    "broker_request_duration_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPSTREAM = Counter(
    "broker_upstream_requests_total", "Calls to Neto by action and outcome", ["action", "status"]
)
BUNDLES = Counter("broker_bundles_issued_total", "Credential bundles issued", ["auth_method"])
RATE_LIMIT_PAUSES = Counter(
    "broker_rate_limit_pauses_total",
    "Stores paused after Neto answered 429 or budget ran out",
    ["reason"],
)
# Reads that joined an identical read already in flight to Neto (neto/flights.py): each one
# is an upstream call, and a request of the merchant's shared budget, saved.
COALESCED_READS = Counter(
    "broker_coalesced_reads_total",
    "Read calls answered by an identical read already in flight (upstream calls saved)",
)
# Read from the database on every scrape (not counted in memory), so every replica and
# worker reports the same truth; "mostrecent" picks the scraping worker's fresh reading.
INSTALLS = Gauge(
    "broker_installs", "Installs by status", ["status"], multiprocess_mode="mostrecent"
)


# Labelled series by their labels, looked up once: `labels()` takes a lock and builds its
# key on every call, a cost every request would pay. Bounded like the series themselves
# (label values are route templates and fixed names).
_SERIES: dict[tuple[object, tuple[str, ...]], Any] = {}


def series(metric: Counter | Histogram, *labels: str) -> Any:
    """`metric.labels(*labels)`, from the cache after the first time."""
    found = _SERIES.get((metric, labels))
    if found is None:
        found = _SERIES[(metric, labels)] = metric.labels(*labels)
    return found


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    series(REQUESTS, method, route, str(status)).inc()
    series(LATENCY, method, route).observe(seconds)


def count_upstream(action: str, outcome: str) -> None:
    """One call to Neto by action (one of the 41) and outcome (a status or a failure)."""
    series(UPSTREAM, action, outcome).inc()


# Stores by what their budget is doing on this replica (paused after Neto's 429, running
# below the configured budget at a learned one): a fixed label set, never a store id.
STORE_BUDGETS = Gauge(
    "broker_store_budget_stores",
    "Stores whose Neto budget is paused or learned (below the configured one)",
    ["state"],
    multiprocess_mode="livesum",
)

STORE_CACHE_ENTRIES = Gauge(
    "broker_store_cache_entries",
    "Opened store credentials held in memory (summed over workers)",
    multiprocess_mode="livesum",
)


def set_installs(counts: dict[str, int]) -> None:
    for status, count in counts.items():
        INSTALLS.labels(status).set(count)


def exposition() -> tuple[bytes, str]:
    """The text a scrape gets: this process's registry, or every worker's in
    multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# Background jobs (service/jobs/): counted by the replica that holds the job's lease.
SWEEP_SWEPT = Counter("broker_health_sweep_swept_total", "Installs verified by the health sweep")
SWEEP_FAILED = Counter(
    "broker_health_sweep_failed_total",
    "Health-sweep verifies that did not pass: refused (re-auth flagged) or error",
    ["reason"],
)
SWEEP_DEFERRED = Counter(
    "broker_health_sweep_deferred_total",
    "Health-sweep verifies put off because the store's callers were using its budget",
)
SWEEP_LAG = Gauge(
    "broker_health_sweep_lag_seconds",
    "How long the most overdue active install has waited past its sweep period",
    multiprocess_mode="mostrecent",
)
AUDIT_FAILURES = Counter(
    "broker_audit_failures_total",
    "Changes committed without their audit row and event, because writing those failed",
    ["event"],
)
ID_HEADROOM = Gauge(
    "broker_id_headroom_ratio",
    "Share of each growing id's range still unused (1 = untouched, 0 = exhausted)",
    ["sequence"],
    multiprocess_mode="mostrecent",
)
PRUNED = Counter("broker_retention_pruned_total", "Rows removed by retention", ["table"])
# Neto's notifications (service/inbound/): `type` is one of the broker's event types (an
# unknown Neto kind is `neto.notification`), `reason` a fixed name; never a store id.
NOTIFICATIONS = Counter(
    "broker_neto_notifications_total",
    "Neto notifications taken in, by event type and outcome (accepted, duplicate)",
    ["type", "outcome"],
)
NOTIFICATIONS_REFUSED = Counter(
    "broker_neto_notifications_refused_total",
    "Neto notifications refused, by reason (unauthorized, revoked, invalid, too_large, "
    "rate_limited)",
    ["reason"],
)
