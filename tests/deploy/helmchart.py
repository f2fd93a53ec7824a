"""Render the Helm chart with Helm's own engine, for the deployment tests.

The engine is helm-python-sdk (import name ``helm_python``): a ctypes binding to
libhelm_c, Helm's Go SDK compiled into a shared library that ships inside the wheel.
No ``helm`` binary and no network are needed, so these tests run offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "neto-token-broker"
PRODUCTION_VALUES = REPO_ROOT / "helm" / "values-production.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

RELEASE = "broker"
NAMESPACE = "neto"


def helm_module() -> Any:
    """Import helm_python, failing (never skipping) with a message that says what to do."""
    try:
        import helm_python
    except Exception as exc:  # ImportError, or HelmLibraryError when libhelm_c won't load
        pytest.fail(
            "helm-python-sdk is needed to render the chart (pip install 'helm-python-sdk>=0.2'); "
            f"importing helm_python failed: {exc!r}"
        )
    return helm_python


@dataclass
class Rendered:
    """One `helm template`: the manifests as dicts, and NOTES.txt as text."""

    docs: list[dict[str, Any]]
    notes: str
    raw: dict[str, str] = field(repr=False)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected exactly one {kind}, rendered {len(found)}"
        return found[0]

    def settings(self) -> dict[str, str]:
        """The data of the settings ConfigMap (the one the server reads via envFrom)."""
        deployment = self.one("Deployment")
        env_from = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        name = env_from[0]["configMapRef"]["name"]
        found = [c for c in self.of_kind("ConfigMap") if c["metadata"]["name"] == name]
        assert len(found) == 1, f"the Deployment reads ConfigMap {name}, which is not rendered"
        data: dict[str, str] = found[0]["data"]
        return data

    def kinds(self) -> set[str]:
        return {d["kind"] for d in self.docs}


def render(values: dict[str, Any] | None = None) -> Rendered:
    helm = helm_module()
    with helm.Chart.load(str(CHART_DIR)) as chart:
        raw: dict[str, str] = chart.render(
            values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    docs: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(raw.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return Rendered(docs=docs, notes=notes, raw=raw)


def production_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return loaded


# Values a developer or CI would give for a throw-away install: the chart generates the
# Secret. The strings are recognisable so a test can look for them anywhere they leak.
DEV_SECRET_DATA = {
    "databaseUrl": "postgresql+asyncpg://broker:pw-LEAKCHECK-db@db:5432/broker",
    "encryptionKeys": "k1:LEAKCHECK-enc-c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXM=",
    "jwtHs256Keys": "h1:LEAKCHECK-hs256-0123456789abcdef0123456789abcdef",
    "netoClientSecret": "LEAKCHECK-neto-client-secret",
    "netoApps": '{"staging": {"client_id": "stg", "client_secret": "LEAKCHECK-staging"}}',
    "metricsToken": "LEAKCHECK-metrics-token-0123456789abcdef",
}


def dev_values() -> dict[str, Any]:
    return {
        "config": {"env": "development", "netoClientId": "public-client-id"},
        "secret": {"data": dict(DEV_SECRET_DATA)},
        "ingress": {"enabled": True},
        "networkPolicy": {"enabled": True},
        "jwks": {"inline": '{"keys": []}'},
    }
