"""One error hierarchy, one JSON envelope.

Every error the broker produces is `{"error", "detail", "request_id"}` with the header
`X-Broker-Error`. Merchant-facing OAuth routes render the same error as a small HTML page.
"""

from __future__ import annotations

from typing import ClassVar


class BrokerError(Exception):
    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    default_detail: ClassVar[str] = "The broker could not complete the request."

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None):
        self.detail = detail or self.default_detail
        self.headers = headers or {}
        super().__init__(self.detail)


# The contract's codes, one class each, so callers can `raise StoreNotFound()`.
class Unauthorized(BrokerError):
    """The bearer token is missing or not valid."""

    code = "unauthorized"
    status = 401
    default_detail = "A valid bearer token is required."


class Forbidden(BrokerError):
    """The token lacks the scope the route needs."""

    code = "forbidden"
    status = 403
    default_detail = "The token does not grant this operation."


class StoreNotAllowed(BrokerError):
    """The store is not in the token's `stores` claim."""

    code = "store_not_allowed"
    status = 403
    default_detail = "The token does not grant this store."


class ActionNotAllowed(BrokerError):
    """The action is not in the token's `actions` grant."""

    code = "action_not_allowed"
    status = 403
    default_detail = "The token does not grant this action."


class StoreNotFound(BrokerError):
    """No install exists for the store."""

    code = "store_not_found"
    status = 404
    default_detail = "No install exists for this store."


class UnknownAction(BrokerError):
    """The name is not one of the 41 Neto API actions."""

    code = "unknown_action"
    status = 404
    default_detail = "That is not a Neto API action."


class NotFound(BrokerError):
    """No route matches the path."""

    code = "not_found"
    status = 404
    default_detail = "No such route."


class MethodNotAllowed(BrokerError):
    """The route does not take this method."""

    code = "method_not_allowed"
    status = 405
    default_detail = "That method is not allowed here."


class StoreRevoked(BrokerError):
    """The store's install was revoked."""

    code = "store_revoked"
    status = 410
    default_detail = "The store's install was revoked."


class StoreReauthRequired(BrokerError):
    """Neto refused the stored credentials; the merchant must re-authorise."""

    code = "store_reauth_required"
    status = 409
    default_detail = "The store must be re-authorised by the merchant."


class InvalidStoreDomain(BrokerError):
    """The store domain is not a valid public host name."""

    code = "invalid_store_domain"
    status = 400
    default_detail = "The store domain is not valid."


class InvalidState(BrokerError):
    """The install link is unknown, already used, or being completed."""

    code = "invalid_state"
    status = 400
    default_detail = "The install link is unknown or already used."


class StateExpired(BrokerError):
    """The install link is past its lifetime."""

    code = "state_expired"
    status = 400
    default_detail = "The install link has expired."


class ValidationFailed(BrokerError):
    """The body or a parameter does not fit the schema (422)."""

    code = "validation_error"
    status = 422
    default_detail = "The request is not valid."


class BadRequest(BrokerError):
    """The request is malformed before any schema applies (400)."""

    code = "validation_error"
    status = 400
    default_detail = "The request is not valid."


class PayloadTooLarge(BrokerError):
    """The request body is over its cap."""

    code = "payload_too_large"
    status = 413
    default_detail = "The request body is too large."


class UnsupportedMediaType(BrokerError):
    """The request body is not JSON."""

    code = "unsupported_media_type"
    status = 415
    default_detail = "The request body must be application/json."


class RateLimited(BrokerError):
    """The store's budget is used up, or Neto paused it."""

    code = "rate_limited"
    status = 429
    default_detail = "Too many requests for this store; retry later."


class OAuthNotConfigured(BrokerError):
    """The add-on's OAuth client is not configured."""

    code = "oauth_not_configured"
    status = 503
    default_detail = "Neto OAuth is not configured on this broker."


class ServiceUnavailable(BrokerError):
    """The database cannot serve the request now."""

    code = "service_unavailable"
    status = 503
    default_detail = "The broker cannot reach its database; retry shortly."

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None):
        # A database that did not answer is most often back within a second (a failover,
        # a pool full for a moment): say when to try again (RFC 9110 §10.2.3), as the
        # typed client and any HTTP library honour. Callers that know better pass theirs.
        super().__init__(detail, headers={"Retry-After": "1", **(headers or {})})


class TokenExchangeFailed(BrokerError):
    """Neto did not issue a usable access token."""

    code = "token_exchange_failed"
    status = 502
    default_detail = "Neto did not issue an access token for this install."


class StoreDomainMismatch(BrokerError):
    """Neto issued the token for another store than requested."""

    code = "store_domain_mismatch"
    status = 502
    default_detail = "Neto issued a token for a different store than requested."


class UpstreamUnreachable(BrokerError):
    """The store's API could not be reached (or redirected)."""

    code = "upstream_unreachable"
    status = 502
    default_detail = "The store's Neto API is unreachable."
    # True when a write's connection broke after it may have been sent: its outcome is
    # unknown (an idempotent write is then never sent again).
    maybe_sent = False


class UpstreamUnauthorized(BrokerError):
    """Neto refused the store's credentials."""

    code = "upstream_unauthorized"
    status = 502
    default_detail = "Neto refused the store's credentials; re-authorise the store."


class UpstreamResponseTooLarge(BrokerError):
    """The store's API answered over the response cap."""

    code = "upstream_response_too_large"
    status = 502
    default_detail = "The store's Neto API answered with too large a body."


class UpstreamTimeout(BrokerError):
    """The store's API did not answer within the deadline."""

    code = "upstream_timeout"
    status = 504
    default_detail = "The store's Neto API did not answer in time."


class UpstreamOutcomeUnknown(BrokerError):
    """A write with this Idempotency-Key may have reached Neto, and no answer came back."""

    code = "upstream_outcome_unknown"
    status = 504
    default_detail = (
        "The write sent with this Idempotency-Key may have reached Neto, but no answer came "
        "back; it is never sent again. Check the store (e.g. a Get* call) before writing anew "
        "with a new key."
    )


class IdempotencyKeyReused(BrokerError):
    """The key was used with another request."""

    code = "idempotency_key_reused"
    status = 422
    default_detail = (
        "This Idempotency-Key was used with a different request (action, body or media "
        "types); it was not sent. Use a new key for a new request."
    )


class IdempotencyKeyInFlight(BrokerError):
    """The first request with this key is still out."""

    code = "idempotency_key_in_flight"
    status = 409
    default_detail = (
        "The first request with this Idempotency-Key is still being answered; retry shortly."
    )


class InternalError(BrokerError):
    """An unexpected failure inside the broker."""

    code = "internal_error"
    status = 500
    default_detail = "The broker hit an unexpected error."


class StoreSecretUnreadable(BrokerError):
    """A sealed column of the store's row does not open with the configured keys: tampered
    with, copied from another row, or sealed under a key id that is no longer configured."""

    code = "store_secret_unreadable"
    status = 500
    default_detail = (
        "The store's stored credentials cannot be opened; an operator must check the key "
        "configuration and reinstall or re-register the store."
    )


class InstallDenied(BrokerError):
    """The merchant did not approve the install on Neto."""

    code = "install_denied"
    status = 400
    default_detail = "The merchant did not approve the install on Neto."
