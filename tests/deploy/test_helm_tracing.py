"""The chart passes the standard OTEL_* variables through to the server (README
"Tracing"), the exporter's headers from a Secret, and opens the collector's port in the
NetworkPolicy only when an endpoint is set."""

from __future__ import annotations

from typing import Any

import pytest

from .helmchart import Rendered, helm_module, render

ENDPOINT = "http://otel-collector.observability:4318"


def server_env(rendered: Rendered) -> list[dict[str, Any]]:
    deployment = rendered.one("Deployment")
    env: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


def egress_ports(rendered: Rendered) -> set[int]:
    policy = rendered.one("NetworkPolicy")
    return {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}


def test_tracing_is_off_by_default() -> None:
    rendered = render()
    assert not [e for e in server_env(rendered) if e["name"].startswith("OTEL_")]
    assert 4318 not in egress_ports(rendered)


def test_otel_variables_reach_the_server_and_the_collector_port_opens() -> None:
    rendered = render(
        {
            "tracing": {
                "env": {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_BSP_SCHEDULE_DELAY": 500},
                "headersSecret": {"name": "collector-token", "key": "headers"},
                "collectorTo": [{"namespaceSelector": {"matchLabels": {"name": "observability"}}}],
            }
        }
    )
    env = {e["name"]: e for e in server_env(rendered)}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == ENDPOINT
    assert env["OTEL_BSP_SCHEDULE_DELAY"]["value"] == "500"
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["valueFrom"]["secretKeyRef"] == {
        "name": "collector-token",
        "key": "headers",
    }
    policy = rendered.one("NetworkPolicy")
    [rule] = [r for r in policy["spec"]["egress"] if r["ports"][0]["port"] == 4318]
    assert rule["to"] == [{"namespaceSelector": {"matchLabels": {"name": "observability"}}}]


@pytest.mark.parametrize(
    "name", ["BROKER_LOG_LEVEL", "OTEL_EXPORTER_OTLP_HEADERS", "otel_service_name"]
)
def test_tracing_env_takes_only_plain_otel_variables(name: str) -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmValuesError):
        render({"tracing": {"env": {name: "x"}}})
