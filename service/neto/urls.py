"""The store API URL, built from the configured template and a validated domain."""

from __future__ import annotations

import functools
from urllib.parse import quote, urlsplit

import yarl

_PLACEHOLDER = "store-domain-placeholder.invalid"


class ApiUrlBuilder:
    """Builds a store's API URL from the configured template, from parts.

    The template's `{store_domain}` may stand for the host (production) or a path
    segment (tests and the demo point every store at one local server). The validated
    domain is placed into that part only; it never meets string concatenation.
    """

    def __init__(self, template: str) -> None:
        probe = urlsplit(template.replace("{store_domain}", _PLACEHOLDER))
        if probe.scheme not in ("http", "https") or not probe.hostname:
            raise ValueError("BROKER_NETO_API_URL_TEMPLATE must be an http(s) URL")
        self.scheme = probe.scheme
        self.in_host = probe.hostname == _PLACEHOLDER
        self.host = probe.hostname
        self.port = probe.port
        self.path_parts = probe.path.split("/")
        if not self.in_host and _PLACEHOLDER not in self.path_parts:
            raise ValueError("{store_domain} must be the host or a whole path segment")

    def build(self, store_domain: str) -> yarl.URL:
        """The store's API URL."""
        if self.in_host:
            host, path = store_domain, "/".join(self.path_parts)
        else:
            host = self.host
            path = "/".join(
                quote(store_domain, safe="") if part == _PLACEHOLDER else part
                for part in self.path_parts
            )
        if ":" in host:  # an IPv6 literal (tests and the demo on [::1]): bracketed
            host = f"[{host}]"
        return yarl.URL.build(
            scheme=self.scheme, host=host, port=self.port, path=path, encoded=True
        )

    @functools.lru_cache(maxsize=131072)  # noqa: B019  (one builder per app; bounded)
    def url_for(self, store_domain: str) -> str:
        """The URL as text (a bundle's `api_url`; the upstream client parses it back,
        which takes a microsecond), memoised per domain: as text it costs a quarter of
        the memory of the URL object, which matters with 100,000 stores."""
        return str(self.build(store_domain))
