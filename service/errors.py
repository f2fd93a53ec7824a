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


def _error(code: str, status: int, default: str) -> type[BrokerError]:
    return type(
        "".join(part.title() for part in code.split("_")),
        (BrokerError,),
        {"code": code, "status": status, "default_detail": default, "__module__": __name__},
    )


# The contract's codes. Each is a class so callers can `raise StoreNotFound()`.
Unauthorized = _error("unauthorized", 401, "A valid bearer token is required.")
Forbidden = _error("forbidden", 403, "The token does not grant this operation.")
StoreNotAllowed = _error("store_not_allowed", 403, "The token does not grant this store.")
ActionNotAllowed = _error("action_not_allowed", 403, "The token does not grant this action.")
StoreNotFound = _error("store_not_found", 404, "No install exists for this store.")
UnknownAction = _error("unknown_action", 404, "That is not a Neto API action.")
NotFound = _error("not_found", 404, "No such route.")
MethodNotAllowed = _error("method_not_allowed", 405, "That method is not allowed here.")
StoreRevoked = _error("store_revoked", 410, "The store's install was revoked.")
StoreReauthRequired = _error(
    "store_reauth_required", 409, "The store must be re-authorised by the merchant."
)
InvalidStoreDomain = _error("invalid_store_domain", 400, "The store domain is not valid.")
InvalidState = _error("invalid_state", 400, "The install link is unknown or already used.")
StateExpired = _error("state_expired", 400, "The install link has expired.")
ValidationFailed = _error("validation_error", 422, "The request is not valid.")
BadRequest = _error("validation_error", 400, "The request is not valid.")
PayloadTooLarge = _error("payload_too_large", 413, "The request body is too large.")
UnsupportedMediaType = _error(
    "unsupported_media_type", 415, "The request body must be application/json."
)
RateLimited = _error("rate_limited", 429, "Too many requests for this store; retry later.")
OAuthNotConfigured = _error(
    "oauth_not_configured", 503, "Neto OAuth is not configured on this broker."
)
ServiceUnavailable = _error(
    "service_unavailable", 503, "The broker cannot reach its database; retry shortly."
)
TokenExchangeFailed = _error(
    "token_exchange_failed", 502, "Neto did not issue an access token for this install."
)
StoreDomainMismatch = _error(
    "store_domain_mismatch", 502, "Neto issued a token for a different store than requested."
)
UpstreamUnreachable = _error("upstream_unreachable", 502, "The store's Neto API is unreachable.")
UpstreamUnauthorized = _error(
    "upstream_unauthorized", 502, "Neto refused the store's credentials; re-authorise the store."
)
UpstreamResponseTooLarge = _error(
    "upstream_response_too_large", 502, "The store's Neto API answered with too large a body."
)
UpstreamTimeout = _error("upstream_timeout", 504, "The store's Neto API did not answer in time.")
InternalError = _error("internal_error", 500, "The broker hit an unexpected error.")
# A sealed column of the store's row does not open with the configured keys: tampered
# with, copied from another row, or sealed under a key id that is no longer configured.
StoreSecretUnreadable = _error(
    "store_secret_unreadable",
    500,
    "The store's stored credentials cannot be opened; an operator must check the key "
    "configuration and reinstall or re-register the store.",
)
InstallDenied = _error("install_denied", 400, "The merchant did not approve the install on Neto.")
