"""Behind the chart's public Ingress every merchant's browser arrives as the ingress
controller's address. The install limit counts per client address, so the chart sets
BROKER_TRUSTED_PROXIES from `ingress.trustedProxies` (default 1) whenever that Ingress is
on; otherwise the 31st install in a minute, from anyone, would answer 429.

The last test feeds the rendered ConfigMap value to the broker the way a pod reads it (an
environment variable) and sends two merchants through one "controller" address."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .helmchart import Rendered, dev_values, helm_module, production_values, render


def with_ingress(**ingress: Any) -> dict[str, Any]:
    values = dev_values()
    values["ingress"] = {"enabled": True, **ingress}
    return values


@pytest.mark.parametrize("which", ["production", "development"])
def test_with_the_public_ingress_on_the_broker_counts_one_proxy(which: str) -> None:
    rendered = render(production_values() if which == "production" else dev_values())
    assert rendered.settings()["BROKER_TRUSTED_PROXIES"] == "1"
    # The migration Job gets the same settings as plain env; it must not disagree.
    job = rendered.one("Job")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in job.get("env", [])}
    assert env.get("BROKER_TRUSTED_PROXIES") == "1"


def test_without_the_ingress_the_broker_keeps_counting_the_peer(default_render: Rendered) -> None:
    # No proxy the chart knows of: trusting X-Forwarded-For would let clients pick an address.
    assert "BROKER_TRUSTED_PROXIES" not in default_render.settings()


@pytest.mark.parametrize("count", [0, 2, 3])
def test_a_load_balancer_in_front_is_counted_through_the_value(count: int) -> None:
    rendered = render(with_ingress(trustedProxies=count))
    assert rendered.settings()["BROKER_TRUSTED_PROXIES"] == str(count)


def test_setting_it_through_extra_env_as_well_is_refused() -> None:
    # Two places for one number: the render fails rather than pick one silently.
    helm = helm_module()
    values = with_ingress()
    values["config"]["extraEnv"] = {"BROKER_TRUSTED_PROXIES": "2"}
    with pytest.raises(helm.HelmRenderError, match=r"ingress\.trustedProxies"):
        render(values)


def test_without_the_ingress_extra_env_may_set_it() -> None:
    # An operator with a proxy of their own (not this chart's Ingress) still can.
    rendered = render({"config": {"extraEnv": {"BROKER_TRUSTED_PROXIES": "2"}}})
    assert rendered.settings()["BROKER_TRUSTED_PROXIES"] == "2"


@pytest.mark.parametrize("bad", [-1, 11, "one", 1.5])
def test_the_schema_refuses_what_the_broker_would_refuse(bad: Any) -> None:
    # The broker accepts 0..10 (service/config.py); a bad value fails at `helm install`,
    # not as a crash-looping pod.
    helm = helm_module()
    with pytest.raises(helm.HelmValuesError, match="trustedProxies"):
        render(with_ingress(trustedProxies=bad))


async def test_merchants_behind_the_rendered_ingress_each_get_their_own_limit(
    app_factory, settings_factory, monkeypatch
):
    value = render(dev_values()).settings()["BROKER_TRUSTED_PROXIES"]
    monkeypatch.setenv("BROKER_TRUSTED_PROXIES", value)  # as the pod's envFrom gives it
    app = await app_factory(settings_factory(install_rate_per_minute=1))
    # Every request comes from one peer (the controller); it writes the browser's address.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.42.0.7", 40000)),
        base_url="http://broker.test",
    ) as client:
        for merchant in ("198.51.100.1", "198.51.100.2", "203.0.113.9"):
            response = await client.get(
                "/oauth/install",
                params={"store_domain": "shop.example.com"},
                headers={"X-Forwarded-For": merchant},
            )
            assert response.status_code == 302, (merchant, response.status_code)
        again = await client.get(
            "/oauth/install",
            params={"store_domain": "shop.example.com"},
            headers={"X-Forwarded-For": "198.51.100.1"},
        )
        assert again.status_code == 429, "the same merchant again is still limited"
        ready = (await client.get("/readyz")).json()
    assert ready["client_address"] == "x-forwarded-for[-1]"
