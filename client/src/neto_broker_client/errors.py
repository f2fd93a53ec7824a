"""The broker's refusals as exceptions: one class per stable error code.

The broker answers every refusal of its own with `{"error", "detail", "request_id"}` and
the header `X-Broker-Error`; `raise_for_refusal` turns that into the class of its code
(`CODES`), so callers write `except StoreRevoked:` instead of comparing strings. A code
this client does not know yet (a newer broker) raises the base `BrokerError` with that
code. tests/client/test_codes.py fails when the broker's codes and `CODES` drift apart.
"""

from __future__ import annotations

from typing import ClassVar

import httpx


class BrokerError(Exception):
    """A refusal by the broker. `retry_after`: seconds from `Retry-After`, when sent."""

    code_name: ClassVar[str] = ""  # the class's own code; "" on the base

    def __init__(
        self,
        code: str,
        message: str,
        status: int,
        retry_after: float | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.request_id = request_id


class UnexpectedResponse(BrokerError):
    """An answer that is neither what was asked for nor the broker's envelope (e.g. a
    proxy's 502 page in front of the broker). `code` is `unexpected_response`."""


class WebhookVerificationError(Exception):
    """A webhook delivery whose signature or timestamp does not check out."""


# One class per contract code; the docstring says when the broker answers it.
class Unauthorized(BrokerError):
    """401: the bearer token is missing or not valid."""

    code_name = "unauthorized"


class Forbidden(BrokerError):
    """403: the token lacks the scope the route needs."""

    code_name = "forbidden"


class StoreNotAllowed(BrokerError):
    """403: the store is not in the token's `stores` claim."""

    code_name = "store_not_allowed"


class ActionNotAllowed(BrokerError):
    """403: the action is outside the token's `actions` (or `fields`) grant."""

    code_name = "action_not_allowed"


class StoreNotFound(BrokerError):
    """404: no install exists for the store."""

    code_name = "store_not_found"


class UnknownAction(BrokerError):
    """404: not a Neto API action."""

    code_name = "unknown_action"


class NotFound(BrokerError):
    """404: no route matches the path (a base URL pointing elsewhere?)."""

    code_name = "not_found"


class MethodNotAllowed(BrokerError):
    """405: the route does not take this method."""

    code_name = "method_not_allowed"


class StoreRevoked(BrokerError):
    """410: the store's install was revoked."""

    code_name = "store_revoked"


class StoreReauthRequired(BrokerError):
    """409: Neto refused the stored credentials; the merchant must re-authorise."""

    code_name = "store_reauth_required"


class InvalidStoreDomain(BrokerError):
    """400: the store domain is not a valid public host name."""

    code_name = "invalid_store_domain"


class InvalidState(BrokerError):
    """400: the install link is unknown or already used."""

    code_name = "invalid_state"


class StateExpired(BrokerError):
    """400: the install link has expired."""

    code_name = "state_expired"


class ValidationFailed(BrokerError):
    """400/422: the request does not fit the schema (e.g. a cursor not from this API)."""

    code_name = "validation_error"


class PayloadTooLarge(BrokerError):
    """413: the request body is over the broker's cap."""

    code_name = "payload_too_large"


class UnsupportedMediaType(BrokerError):
    """415: the request body is not JSON."""

    code_name = "unsupported_media_type"


class RateLimited(BrokerError):
    """429: the store's budget is spent or Neto paused it; see `retry_after`."""

    code_name = "rate_limited"


class OAuthNotConfigured(BrokerError):
    """503: the broker has no Neto OAuth client configured."""

    code_name = "oauth_not_configured"


class ServiceUnavailable(BrokerError):
    """503: the broker cannot serve now (its database, its memory budget); retry."""

    code_name = "service_unavailable"


class TokenExchangeFailed(BrokerError):
    """502: Neto did not issue a usable access token."""

    code_name = "token_exchange_failed"


class StoreDomainMismatch(BrokerError):
    """502: Neto issued the token for another store than requested."""

    code_name = "store_domain_mismatch"


class UpstreamUnreachable(BrokerError):
    """502: the store's Neto API could not be reached."""

    code_name = "upstream_unreachable"


class UpstreamUnauthorized(BrokerError):
    """502: Neto refused the store's credentials."""

    code_name = "upstream_unauthorized"


class UpstreamResponseTooLarge(BrokerError):
    """502: the store's Neto API answered over the broker's response cap."""

    code_name = "upstream_response_too_large"


class UpstreamTimeout(BrokerError):
    """504: the store's Neto API did not answer in time."""

    code_name = "upstream_timeout"


class UpstreamOutcomeUnknown(BrokerError):
    """504: a write with this idempotency key may have reached Neto unanswered; it is never
    sent again. Check the store before writing anew with a new key."""

    code_name = "upstream_outcome_unknown"


class IdempotencyKeyReused(BrokerError):
    """422: the idempotency key was used with another request."""

    code_name = "idempotency_key_reused"


class IdempotencyKeyInFlight(BrokerError):
    """409: the first request with this idempotency key is still out."""

    code_name = "idempotency_key_in_flight"


class InternalError(BrokerError):
    """500: an unexpected failure inside the broker."""

    code_name = "internal_error"


class StoreSecretUnreadable(BrokerError):
    """500: the store's stored credentials do not open with the broker's keys."""

    code_name = "store_secret_unreadable"


class InstallDenied(BrokerError):
    """400: the merchant did not approve the install on Neto."""

    code_name = "install_denied"


# Built from the classes above, so a code has exactly one class and one place to add it.
CODES: dict[str, type[BrokerError]] = {
    cls.code_name: cls for cls in BrokerError.__subclasses__() if cls.code_name
}


def _retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds; the HTTP-date form is not sent by the broker and counts
    as absent."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def refusal(response: httpx.Response) -> BrokerError | None:
    """The broker's own refusal in `response` as its exception, or None when the answer
    is not one (no `X-Broker-Error`: a success, or Neto's answer passed through)."""
    code = response.headers.get("x-broker-error")
    if code is None:
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    message = str(body.get("detail", "")) if isinstance(body, dict) else ""
    cls = CODES.get(code, BrokerError)
    # X-Request-ID is on every answer, the same id as the envelope's `request_id`.
    request_id = response.headers.get("x-request-id")
    return cls(code, message, response.status_code, _retry_after(response), request_id=request_id)


def unexpected(response: httpx.Response) -> UnexpectedResponse:
    """A non-2xx answer without the broker's envelope, as an exception."""
    return UnexpectedResponse(
        "unexpected_response",
        f"HTTP {response.status_code} without X-Broker-Error from {response.request.url.path}",
        response.status_code,
        _retry_after(response),
        request_id=response.headers.get("x-request-id"),
    )
