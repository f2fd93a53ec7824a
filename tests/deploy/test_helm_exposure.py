"""Who can reach what, as the chart renders it: the public Ingress carries only what
merchants' browsers need (/oauth), internal callers and operators use the Service or an
internal Ingress, /metrics is routed by neither Ingress and needs the scrape token, and
the NetworkPolicy (on by default) admits peers by namespace AND pod.

Paths are checked the way Kubernetes matches `pathType: Prefix` (whole path elements), so
a test asks "would this request reach the broker through that Ingress", not "is this
string in the manifest"."""

from __future__ import annotations

from typing import Any

import pytest

from .helmchart import Rendered, dev_values, helm_module, production_values, render

# What a merchant's browser requests, what callers and operators request, and what only
# Prometheus may request.
BROWSER = ["/oauth/install", "/oauth/callback"]
CALLERS = [
    "/credentials/N1",
    "/invoke/N1/GetItem",
    "/neto/N1/do/WS/NetoAPI",
    "/installs",
    "/installs/N1/verify",
    "/audit",
    "/events",
    "/webhooks",
    "/docs",
    "/docs/static/swagger-ui.css",
    "/openapi.json",
]
SCRAPER = ["/metrics"]
PROBES = ["/healthz", "/readyz"]


def ingress_named(rendered: Rendered, exposure: str) -> dict[str, Any]:
    found = [
        i
        for i in rendered.of_kind("Ingress")
        if i["metadata"]["labels"].get("neto-token-broker/exposure") == exposure
    ]
    assert len(found) == 1, f"expected one {exposure} Ingress, rendered {len(found)}"
    return found[0]


def routes(ingress: dict[str, Any], request_path: str) -> bool:
    """Whether any rule of the Ingress sends `request_path` to a backend (Prefix match on
    path elements, Exact match, as the Ingress API defines them)."""
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            prefix = path["path"]
            if path["pathType"] == "Exact":
                if request_path == prefix:
                    return True
                continue
            # Prefix (ImplementationSpecific is never rendered: see the assertion below).
            assert path["pathType"] == "Prefix", path
            trimmed = prefix.rstrip("/")
            if trimmed == "" or request_path == trimmed or request_path.startswith(trimmed + "/"):
                return True
    return False


# --- the public Ingress ----------------------------------------------------------------


@pytest.mark.parametrize("which", ["production", "development"])
def test_the_public_ingress_carries_only_what_browsers_need(which: str) -> None:
    rendered = render(production_values() if which == "production" else dev_values())
    public = ingress_named(rendered, "public")
    for path in BROWSER:
        assert routes(public, path), f"the public Ingress must route {path}"
    for path in CALLERS + SCRAPER + PROBES + ["/", "/oauthx", "/oauth-evil"]:
        assert not routes(public, path), f"the public Ingress routes {path} to the internet"
    # Nothing on it needs Neto's underscore headers.
    assert "neto-token-broker/underscores-in-headers" not in public["metadata"].get(
        "annotations", {}
    )


def test_the_production_public_ingress_terminates_tls_on_the_service() -> None:
    rendered = render(production_values())
    public = ingress_named(rendered, "public")
    assert public["spec"]["tls"], "production ingress must terminate TLS"
    service = rendered.one("Service")
    for rule in public["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["number"] == service["spec"]["ports"][0]["port"]


def test_an_old_values_file_routing_paths_on_the_public_ingress_fails_loudly() -> None:
    # The previous chart took `hosts[].paths` (production routed "/"): such a file must
    # not silently keep exposing everything.
    helm = helm_module()
    values = {
        "ingress": {
            "enabled": True,
            "hosts": [{"host": "b.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        }
    }
    with pytest.raises(helm.HelmValuesError, match="paths"):
        render(values)


# --- the internal Ingress --------------------------------------------------------------


def test_the_internal_ingress_carries_callers_and_operators_but_never_metrics() -> None:
    rendered = render(production_values())
    internal = ingress_named(rendered, "internal")
    for path in CALLERS:
        assert routes(internal, path), f"the internal Ingress must route {path}"
    for path in SCRAPER + BROWSER:
        assert not routes(internal, path), f"the internal Ingress routes {path}"
    assert internal["spec"]["ingressClassName"] != ingress_named(rendered, "public")["spec"].get(
        "ingressClassName"
    ), "the internal Ingress must be served by a different (internal) controller"


def test_the_internal_ingress_marks_the_underscore_header_requirement() -> None:
    rendered = render(production_values())
    annotations = ingress_named(rendered, "internal")["metadata"]["annotations"]
    assert annotations["neto-token-broker/underscores-in-headers"] == "required"
    # A server-snippet cannot enable underscores for one host (nginx applies the
    # directive only in a listener's default server) and snippets are off by default:
    # the chart must not pretend otherwise.
    assert not [a for a in annotations if a.endswith("-snippet")]
    assert 'enable-underscores-in-headers: "true"' in rendered.notes
    assert "nginx-internal" in rendered.notes, "NOTES must name the controller to configure"


@pytest.mark.parametrize("path", ["/", "/metrics", "/metrics/"])
def test_an_internal_path_that_would_route_metrics_is_refused(path: str) -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmRenderError, match="metrics"):
        render({"internalIngress": {"enabled": True, "paths": ["/invoke", path]}})


# --- NetworkPolicy ---------------------------------------------------------------------


def _selects_something(selector: Any) -> bool:
    return isinstance(selector, dict) and bool(
        selector.get("matchLabels") or selector.get("matchExpressions")
    )


@pytest.mark.parametrize("which", ["default", "production", "development"])
def test_network_policy_is_on_and_admits_peers_by_namespace_and_pod_together(
    which: str,
) -> None:
    values = {"default": None, "production": production_values(), "development": dev_values()}
    rendered = render(values[which])
    policy = rendered.one("NetworkPolicy")
    [rule] = policy["spec"]["ingress"]
    assert rule.get("from"), "a rule without `from` admits every source"
    for peer in rule["from"]:
        assert set(peer) == {"namespaceSelector", "podSelector"}, peer
        assert _selects_something(peer["namespaceSelector"]), peer
        assert _selects_something(peer["podSelector"]), peer


@pytest.mark.parametrize(
    "peer",
    [
        {"namespaceSelector": {"matchLabels": {"team": "orders"}}},
        {"podSelector": {"matchLabels": {"neto-token-broker/client": "true"}}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "orders"}}},
        {
            "namespaceSelector": {"matchLabels": {"team": "orders"}},
            "podSelector": {"matchLabels": {}},
        },
        {"ipBlock": {"cidr": "0.0.0.0/0"}},
    ],
    ids=["namespace-only", "pod-only", "any-namespace", "any-pod", "ip-block"],
)
def test_network_policy_refuses_a_peer_that_is_not_namespace_and_pod(
    peer: dict[str, Any],
) -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmValuesError):
        render({"networkPolicy": {"ingressFrom": [peer]}})


def test_network_policy_without_peers_is_refused_not_opened() -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmRenderError, match="ingressFrom is empty"):
        render({"networkPolicy": {"ingressFrom": []}})


# --- /metrics scrape token -------------------------------------------------------------


def _metrics_env(rendered: Rendered) -> dict[str, Any]:
    containers = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in containers[0]["env"]}
    ref: dict[str, Any] = env["BROKER_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    return ref


@pytest.mark.parametrize("which", ["default", "production", "development"])
def test_server_pods_require_the_metrics_token_from_the_secret(which: str) -> None:
    values = {"default": None, "production": production_values(), "development": dev_values()}
    rendered = render(values[which])
    ref = _metrics_env(rendered)
    assert ref["key"] == "BROKER_METRICS_TOKEN"
    assert ref["optional"] is False, "a pod must not start with /metrics left open"
    # The migration Job does not need it.
    job_env = rendered.one("Job")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "BROKER_METRICS_TOKEN" not in {e["name"] for e in job_env}


def test_the_servicemonitor_sends_the_scrape_token_the_pods_expect() -> None:
    rendered = render(production_values())
    [endpoint] = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["type"] == "Bearer"
    ref = _metrics_env(rendered)
    assert endpoint["authorization"]["credentials"] == {"name": ref["name"], "key": ref["key"]}


def test_without_require_token_metrics_is_optional_and_scraped_without_one() -> None:
    values = production_values()
    values["metrics"] = {"requireToken": False}
    rendered = render(values)
    assert _metrics_env(rendered)["optional"] is True
    [endpoint] = rendered.one("ServiceMonitor")["spec"]["endpoints"]
    assert "authorization" not in endpoint


def test_a_generated_secret_without_a_metrics_token_fails_clearly() -> None:
    helm = helm_module()
    values = dev_values()
    values["secret"]["data"]["metricsToken"] = ""
    with pytest.raises(helm.HelmRenderError, match="metricsToken"):
        render(values)


def test_a_short_generated_metrics_token_is_refused() -> None:
    helm = helm_module()
    values = dev_values()
    values["secret"]["data"]["metricsToken"] = "too-short"
    with pytest.raises(helm.HelmValuesError, match="metricsToken"):
        render(values)
