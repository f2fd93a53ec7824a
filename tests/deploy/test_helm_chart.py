"""The Helm chart renders, lints, validates against Kubernetes' schemas, and encodes the
deployment rules: probes, hardening, migration hook, secrets kept out of ConfigMaps,
NetworkPolicy (on by default, peers by namespace and pod), autoscaling, a public Ingress
that carries /oauth only, an internal one that never carries /metrics, the /metrics
scrape token and the underscore-header requirement."""

from __future__ import annotations

from typing import Any

import pytest

from .helmchart import (
    CHART_DIR,
    DEV_SECRET_DATA,
    Rendered,
    dev_values,
    helm_module,
    production_values,
    render,
)

# kubernetes-validate ships JSON schemas per Kubernetes minor version. 1.27 is the oldest
# the chart supports (Chart.yaml kubeVersion; matchLabelKeys in topology spread); 1.33
# is a current release.
K8S_VERSIONS = ["1.27", "1.33"]

SECRET_ENV = {
    "BROKER_DATABASE_URL",
    "BROKER_ENCRYPTION_KEYS",
    "BROKER_JWT_HS256_KEYS",
    "BROKER_NETO_CLIENT_SECRET",
    "BROKER_NETO_APPS",
}


def container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{doc['kind']} should run one container, has {len(containers)}"
    result: dict[str, Any] = containers[0]
    return result


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = doc["spec"]["template"]["spec"]
    return result


def env_by_name(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def rendered_with(request: pytest.FixtureRequest, which: str) -> Rendered:
    """The session-wide rendering for "default", "production" or "development" values."""
    fixture = {"default": "default_render", "production": "production_render"}.get(
        which, "dev_render"
    )
    result: Rendered = request.getfixturevalue(fixture)
    return result


# --- lint and schema -------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "production", "development"])
def test_chart_passes_helm_lint_strict(which: str) -> None:
    helm = helm_module()
    values = {"default": None, "production": production_values(), "development": dev_values()}[
        which
    ]
    report = helm.lint(str(CHART_DIR), values, strict=True, namespace="neto")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not problems, f"helm lint ({which} values): {report}"


@pytest.mark.parametrize("which", ["default", "production", "development"])
def test_every_rendered_manifest_is_valid_kubernetes(
    request: pytest.FixtureRequest, which: str
) -> None:
    import kubernetes_validate

    rendered = rendered_with(request, which)
    assert rendered.docs, "the chart rendered nothing"
    for doc in rendered.docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # ServiceMonitor is a Prometheus Operator CRD: kubernetes-validate ships only
            # the built-in API schemas, so this one kind is checked by the assertions in
            # test_production_values_scrape_metrics_with_a_servicemonitor instead.
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} is not a valid Kubernetes "
                    f"{version} object ({which} values): {exc.message} at {list(exc.path)}"
                )


def test_default_values_render_without_any_input(default_render: Rendered) -> None:
    kinds = default_render.kinds()
    expected = {
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceAccount",
        "Job",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert expected <= kinds, f"missing from the default render: {expected - kinds}"
    # Optional parts stay off, and no Secret is invented from nothing.
    for absent in ("Secret", "Ingress", "ServiceMonitor"):
        assert absent not in kinds, f"{absent} should not be rendered by default"
    assert "WARNING" in default_render.notes and "secret.existingSecret" in default_render.notes


def test_values_schema_rejects_a_misspelt_top_level_key() -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmValuesError, match="replicaCounts"):
        render({"replicaCounts": 3})


def test_values_schema_rejects_a_secret_variable_in_config_extra_env() -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmValuesError, match="BROKER_ENCRYPTION_KEYS"):
        render({"config": {"extraEnv": {"BROKER_ENCRYPTION_KEYS": "k1:abc"}}})


def test_extra_env_reaches_the_configmap_as_strings(render_extra: Rendered) -> None:
    data = render_extra.settings()
    assert data["BROKER_MAX_BODY_BYTES"] == "1048576"  # not "1.048576e+06"
    assert data["BROKER_RATIO"] == "0.5"
    assert data["BROKER_ENV"] == "production"


@pytest.fixture(scope="module")
def render_extra() -> Rendered:
    return render({"config": {"extraEnv": {"BROKER_MAX_BODY_BYTES": 1048576, "BROKER_RATIO": 0.5}}})


# --- the Deployment ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "production"])
def test_deployment_probes_use_healthz_and_readyz(
    request: pytest.FixtureRequest, which: str
) -> None:
    rendered = rendered_with(request, which)
    c = container(rendered.one("Deployment"))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # The startup probe must allow a slow start before liveness can kill the pod.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_run_hardened(default_render: Rendered, kind: str) -> None:
    doc = default_render.one(kind)
    pod = pod_spec(doc)
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False

    sc = container(doc)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]

    # With a read-only root, /tmp is the one writable place: an emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in container(doc)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = "/tmp"  # noqa: S108 (the mount is what is checked)
    assert tmp in mounts, f"{kind} does not mount /tmp"
    assert "emptyDir" in volumes[mounts[tmp]]


def test_deployment_shuts_down_gracefully(default_render: Rendered) -> None:
    deployment = default_render.one("Deployment")
    c = container(deployment)
    serve = ["broker", "serve", "--host", "0.0.0.0", "--port", "8000"]  # noqa: S104 (asserted, not bound)
    assert c["command"][:6] == serve
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) > 0
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    # uvicorn needs time left after the preStop sleep to finish in-flight requests.
    assert grace >= int(sleep[1]) + 15, f"grace {grace}s leaves no time after preStop"
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


def test_deployment_spreads_pods_across_nodes_and_zones(default_render: Rendered) -> None:
    deployment = default_render.one("Deployment")
    spread = pod_spec(deployment)["topologySpreadConstraints"]
    keys = {s["topologyKey"] for s in spread}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for s in spread:
        selector = s["labelSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), "spread selector misses the pods"


def test_deployment_has_resources_and_a_dedicated_service_account(
    default_render: Rendered,
) -> None:
    deployment = default_render.one("Deployment")
    resources = container(deployment)["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    sa = default_render.one("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert pod_spec(deployment)["serviceAccountName"] == sa["metadata"]["name"]


def test_pods_roll_when_config_or_secret_changes() -> None:
    base = render(dev_values())
    changed_config = dev_values()
    changed_config["config"]["logLevel"] = "DEBUG"
    changed_secret = dev_values()
    changed_secret["secret"]["data"]["encryptionKeys"] = "k2:rotated-" + "A" * 32

    def annotations(r: Rendered) -> dict[str, str]:
        result: dict[str, str] = r.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
        return result

    a0 = annotations(base)
    a1 = annotations(render(changed_config))
    a2 = annotations(render(changed_secret))
    assert a0["checksum/config"] != a1["checksum/config"]
    assert a0["checksum/secret"] == a1["checksum/secret"]
    assert a0["checksum/secret"] != a2["checksum/secret"]


def test_service_selects_only_the_server_pods(default_render: Rendered) -> None:
    service = default_render.one("Service")
    deployment = default_render.one("Deployment")
    job = default_render.one("Job")
    selector = service["spec"]["selector"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == selector
    assert service["spec"]["ports"][0]["targetPort"] == "http"


# --- migrations ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "production", "development"])
def test_migration_job_is_a_pre_install_pre_upgrade_hook_running_broker_migrate(
    request: pytest.FixtureRequest, which: str
) -> None:
    rendered = rendered_with(request, which)
    job = rendered.one("Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert set(annotations["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation",
        "hook-succeeded",
    }
    c = container(job)
    assert c["command"] == ["broker", "migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"

    deployment = rendered.one("Deployment")
    server = container(deployment)
    assert c["image"] == server["image"]
    assert c["securityContext"] == server["securityContext"]

    # Same settings as the server: the ConfigMap's data inline (the ConfigMap does not
    # exist yet during a pre-install hook), and the secret variables from the same Secret.
    job_env = env_by_name(c)
    config = rendered.settings()
    for name, value in config.items():
        assert job_env[name].get("value") == value, f"migration Job lacks {name}={value}"
    server_env = env_by_name(server)
    for name in SECRET_ENV:
        assert job_env[name]["valueFrom"] == server_env[name]["valueFrom"]
    # It must not depend on resources that a pre-install hook runs before.
    assert "envFrom" not in c
    assert pod_spec(job)["serviceAccountName"] == "default"


def test_generated_secret_exists_before_the_migration_job(dev_render: Rendered) -> None:
    secret = dev_render.one("Secret")
    job = dev_render.one("Job")
    s_ann = secret["metadata"]["annotations"]
    j_ann = job["metadata"]["annotations"]
    assert set(s_ann["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert int(s_ann["helm.sh/hook-weight"]) < int(j_ann["helm.sh/hook-weight"])
    # Deleting it after the hook would leave the Deployment without its Secret.
    assert "hook-succeeded" not in s_ann["helm.sh/hook-delete-policy"]
    assert secret["stringData"] == {
        "BROKER_DATABASE_URL": DEV_SECRET_DATA["databaseUrl"],
        "BROKER_ENCRYPTION_KEYS": DEV_SECRET_DATA["encryptionKeys"],
        "BROKER_JWT_HS256_KEYS": DEV_SECRET_DATA["jwtHs256Keys"],
        "BROKER_NETO_CLIENT_SECRET": DEV_SECRET_DATA["netoClientSecret"],
        "BROKER_NETO_APPS": DEV_SECRET_DATA["netoApps"],
        "BROKER_METRICS_TOKEN": DEV_SECRET_DATA["metricsToken"],
    }
    env = env_by_name(container(dev_render.one("Deployment")))
    assert (
        env["BROKER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
        == (secret["metadata"]["name"])
    )


def test_inline_jwks_is_a_hook_configmap_mounted_where_the_env_points(
    dev_render: Rendered,
) -> None:
    jwks = [c for c in dev_render.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-jwks")]
    assert len(jwks) == 1
    assert "pre-install" in jwks[0]["metadata"]["annotations"]["helm.sh/hook"]
    deployment = dev_render.one("Deployment")
    c = container(deployment)
    file_path = dev_render.settings()["BROKER_JWT_PUBLIC_KEYS_FILE"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "jwks")
    assert file_path.startswith(mount["mountPath"] + "/")
    volume = next(v for v in pod_spec(deployment)["volumes"] if v["name"] == "jwks")
    assert volume["configMap"]["name"] == jwks[0]["metadata"]["name"]


def test_jwks_from_an_existing_secret_is_mounted_from_that_secret() -> None:
    rendered = render({"jwks": {"existingSecret": "idp-jwks", "key": "keys.json"}})
    volume = next(v for v in pod_spec(rendered.one("Deployment"))["volumes"] if v["name"] == "jwks")
    assert volume["secret"]["secretName"] == "idp-jwks"
    assert rendered.settings()["BROKER_JWT_PUBLIC_KEYS_FILE"].endswith("/keys.json")


def test_two_jwks_sources_are_refused() -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmRenderError, match="only one"):
        render({"jwks": {"existingSecret": "a", "inline": "{}"}})


# --- secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "production", "development"])
def test_no_secret_reaches_a_configmap_or_a_plain_env_value(
    request: pytest.FixtureRequest, which: str
) -> None:
    rendered = rendered_with(request, which)
    for cm in rendered.of_kind("ConfigMap"):
        data = cm.get("data", {})
        leaked = SECRET_ENV & set(data)
        assert not leaked, f"ConfigMap {cm['metadata']['name']} holds {leaked}"
        for key, value in data.items():
            assert "LEAKCHECK" not in value, f"secret value in ConfigMap key {key}"
            assert "://" not in value or "@" not in value, f"credentials in URL {key}"
    for kind in ("Deployment", "Job"):
        env = env_by_name(container(rendered.one(kind)))
        for name in SECRET_ENV:
            assert "value" not in env[name], f"{kind} sets {name} as a plain value"
            assert "secretKeyRef" in env[name]["valueFrom"]
        required = {
            n for n in SECRET_ENV if not env[n]["valueFrom"]["secretKeyRef"].get("optional")
        }
        assert required == {"BROKER_DATABASE_URL", "BROKER_ENCRYPTION_KEYS"}


def test_production_values_use_the_existing_secret(production_render: Rendered) -> None:
    assert "Secret" not in production_render.kinds()
    env = env_by_name(container(production_render.one("Deployment")))
    names = {env[n]["valueFrom"]["secretKeyRef"]["name"] for n in SECRET_ENV}
    assert names == {production_values()["secret"]["existingSecret"]}


def test_production_values_without_an_existing_secret_fail_clearly() -> None:
    helm = helm_module()
    values = production_values()
    values["secret"]["existingSecret"] = ""
    with pytest.raises(helm.HelmRenderError, match=r"secret\.existingSecret is required"):
        render(values)


def test_existing_secret_and_generated_secret_data_are_mutually_exclusive() -> None:
    helm = helm_module()
    values = dev_values()
    values["secret"]["existingSecret"] = "mine"
    with pytest.raises(helm.HelmRenderError, match="mutually exclusive"):
        render(values)


# --- scaling ---------------------------------------------------------------------------


def test_hpa_and_pdb_are_on_by_default(default_render: Rendered) -> None:
    hpa = default_render.one("HorizontalPodAutoscaler")
    deployment = default_render.one("Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    # The HPA owns the replica count; an upgrade must not reset it.
    assert "replicas" not in deployment["spec"]
    pdb = default_render.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_without_hpa_replicas_are_fixed_and_a_single_replica_gets_no_pdb() -> None:
    rendered = render({"autoscaling": {"enabled": False}, "replicaCount": 1})
    assert rendered.one("Deployment")["spec"]["replicas"] == 1
    assert "HorizontalPodAutoscaler" not in rendered.kinds()
    # minAvailable 1 of 1 would block every node drain.
    assert "PodDisruptionBudget" not in rendered.kinds()


def test_production_values_run_at_least_three_replicas(production_render: Rendered) -> None:
    assert production_render.one("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 3
    assert production_render.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


# --- network -----------------------------------------------------------------------------


def egress_ports(policy: dict[str, Any]) -> set[tuple[int, str]]:
    return {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}


@pytest.mark.parametrize("which", ["production", "development"])
def test_network_policy_allows_only_dns_postgres_and_https_out(
    request: pytest.FixtureRequest, which: str
) -> None:
    rendered = rendered_with(request, which)
    policy = rendered.one("NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert egress_ports(policy) == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (443, "TCP")}
    ingress_ports = {
        (p["port"], p["protocol"]) for r in policy["spec"]["ingress"] for p in r["ports"]
    }
    assert ingress_ports == {(8000, "TCP")}
    # It covers the server pods and the migration pods.
    selector = policy["spec"]["podSelector"]["matchLabels"].items()
    for kind in ("Deployment", "Job"):
        assert selector <= rendered.one(kind)["spec"]["template"]["metadata"]["labels"].items()


def test_network_policy_database_port_is_configurable() -> None:
    rendered = render({"networkPolicy": {"enabled": True, "databasePort": 6432}})
    assert egress_ports(rendered.one("NetworkPolicy")) == {
        (53, "UDP"),
        (53, "TCP"),
        (6432, "TCP"),
        (443, "TCP"),
    }


def test_production_values_scrape_metrics_with_a_servicemonitor(
    production_render: Rendered,
) -> None:
    monitor = production_render.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics"
    service = production_render.one("Service")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
