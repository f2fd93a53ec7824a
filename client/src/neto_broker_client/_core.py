"""What the sync and async clients share: the requests they send, when a failed one may be
sent again, and how an answer becomes a model or an exception. No I/O here, so the two
flavours differ only in how they wait and send."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from neto_broker_client.errors import BrokerError, refusal, unexpected
from neto_broker_client.models import Bundle, EventPage, InvokeResult, RateLimit

USER_AGENT = "neto-broker-client/0.1.0"
IDEMPOTENCY_KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"

# Neto's read actions, as the broker lists them (service/neto/actions.py; a test keeps the
# two equal). Only these are sent again after a failure without an idempotency key: any
# other name, a write or a name the broker will refuse, is sent at most once.
READ_ACTIONS = frozenset(
    {
        "GetItem", "GetOrder", "GetCustomer", "GetCategory", "GetContent", "GetPayment",
        "GetPaymentMethods", "GetWarehouse", "GetSupplier", "GetVoucher", "GetRma",
        "GetShippingMethods", "GetShippingQuote", "GetCurrencySettings", "GetCart",
        "GetAccountingSystemRelatedAccounts",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Retries:
    """How often a request that is safe to repeat is sent again after a 503 or a failed
    connection: `attempts` tries in all, waiting `Retry-After` when the broker sends one
    (and giving up when it asks for more than `max_delay`), otherwise a jittered backoff
    from `backoff` seconds doubling up to `max_delay`. A 4xx is never retried, nor a write
    without an idempotency key (it may have reached Neto)."""

    attempts: int = 3
    backoff: float = 0.2
    max_delay: float = 10.0

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait after try number `attempt` (1 = the first) failed, or None
        when no try is left."""
        if attempt >= self.attempts:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_delay else None
        base = min(self.max_delay, self.backoff * 2.0 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)  # noqa: S311  (jitter, not a secret)


NO_RETRIES = Retries(attempts=1)


@dataclass(frozen=True)
class Call:
    """One request as the clients send it. `safe`: it may be sent again after a failure."""

    method: str
    path: str
    safe: bool
    params: dict[str, str | int | float] | None = None
    json: Any = None
    headers: dict[str, str] | None = None
    extra_timeout: float = 0.0  # a long poll is held open this much longer than a call


def retry_delay(
    policy: Retries,
    call: Call,
    attempt: int,
    response: httpx.Response | None = None,
    error: httpx.TransportError | None = None,
) -> float | None:
    """Seconds to wait before sending `call` again after this outcome, or None to stop:
    only a safe call, only after a broken connection or a 503, within `policy`."""
    if not call.safe:
        return None
    if error is not None:
        return policy.delay(attempt, None)
    # A replay is the first answer again: asking once more would only repeat it.
    if response is not None and response.headers.get(REPLAYED, "").lower() == "true":
        return None
    if response is not None and response.status_code == 503:
        retry_after = response.headers.get("retry-after", "")
        try:
            seconds: float | None = max(0.0, float(retry_after))
        except ValueError:
            seconds = None
        return policy.delay(attempt, seconds)
    return None


def segment(value: str) -> str:
    """A path segment, escaped so that a store id or action cannot reach another route."""
    return quote(value, safe="")


def credentials_call(store_id: str) -> Call:
    return Call("GET", f"/credentials/{segment(store_id)}", safe=True)


def invoke_call(store_id: str, action: str, body: Any, idempotency_key: str | None) -> Call:
    headers = {IDEMPOTENCY_KEY: idempotency_key} if idempotency_key is not None else None
    return Call(
        "POST",
        f"/invoke/{segment(store_id)}/{segment(action)}",
        # A read can be repeated; a write only when the broker dedupes it by its key.
        safe=action in READ_ACTIONS or idempotency_key is not None,
        json={} if body is None else body,
        headers=headers,
    )


def events_call(after: str | None, wait: float, limit: int) -> Call:
    params: dict[str, str | int | float] = {"limit": limit, "wait": wait}
    if after is not None:
        params["after"] = after
    return Call("GET", "/events", safe=True, params=params, extra_timeout=wait)


def _raise_unless_ok(response: httpx.Response) -> None:
    error: BrokerError | None = refusal(response)
    if error is not None:
        raise error
    if not 200 <= response.status_code < 300:
        raise unexpected(response)


def bundle_of(response: httpx.Response) -> Bundle:
    _raise_unless_ok(response)
    return Bundle.model_validate_json(response.content)


def page_of(response: httpx.Response) -> EventPage:
    _raise_unless_ok(response)
    return EventPage.model_validate_json(response.content)


def result_of(response: httpx.Response) -> InvokeResult:
    """Neto's answer, whatever its status; the broker's own refusal raises."""
    error = refusal(response)
    if error is not None:
        raise error
    body: Any = None
    if "json" in response.headers.get("content-type", ""):
        try:
            body = response.json()
        except ValueError:
            body = None
    return InvokeResult(
        status=response.status_code,
        body=body,
        content=response.content,
        headers=response.headers,
        rate_limit=rate_limit_of(response.headers),
        replayed=response.headers.get(REPLAYED, "").lower() == "true",
        request_id=response.headers.get("x-request-id"),
    )


def _item(value: str) -> tuple[str, dict[str, int]]:
    """The first item of a structured-field list such as `"interactive";q=500;w=60`: its
    name and integer parameters (others are skipped)."""
    name, *params = value.split(",", 1)[0].split(";")
    numbers: dict[str, int] = {}
    for param in params:
        key, _, raw = param.strip().partition("=")
        try:
            numbers[key] = int(raw)
        except ValueError:
            continue
    return name.strip().strip('"'), numbers


def rate_limit_of(headers: httpx.Headers) -> RateLimit | None:
    policy, current = headers.get("ratelimit-policy"), headers.get("ratelimit")
    if policy is None and current is None:
        return None
    name, quota = _item(policy or "")
    current_name, left = _item(current or "")
    return RateLimit(
        policy=name or current_name,
        quota=quota.get("q"),
        window=quota.get("w"),
        remaining=left.get("r"),
        reset=left.get("t"),
    )
