"""Prometheus metrics. Label values are route templates and fixed names, never ids."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)
