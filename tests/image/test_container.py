"""The built image, run as production runs it: `broker migrate` then `broker serve` against
PostgreSQL, a merchant's OAuth install, a bundle and an /invoke through the container,
non-root on a read-only root filesystem, and a graceful `docker stop`."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.security.callers import mint
from tests.conftest import AUDIENCE, CLIENT_ID, HS_KID, HS_SECRET
from tests.fakes.neto import FakeNeto, FakeNetoServer
from tests.image.conftest import RUN_FLAGS, TMP, Container, docker
from tests.support import alembic_config, query_of

ROOT = Path(__file__).resolve().parents[2]
SERVE = ["broker", "serve", "--host", "0.0.0.0", "--port", "8000"]  # noqa: S104 (asserted, not bound)
UID = 10001
# The stop grace period given to `docker stop`; the chart's terminationGracePeriodSeconds
# minus its preStop sleep is larger.
GRACE_SECONDS = 20
# Generous: the runtime is a venv on a Debian base. A compiler, a pip cache or a source
# tree slipping into the runtime stage would show here first.
SIZE_CEILING_BYTES = 450_000_000
# Walked for writable directories: everything but the kernel's own filesystems.
PROBE = """
import json, os
writable = []
for top in sorted(os.listdir("/")):
    if top in ("proc", "sys", "dev"):
        continue
    for path, dirs, _ in os.walk("/" + top):
        if os.access(path, os.W_OK):
            writable.append(path)
tries = {}
for folder in ("/tmp", "/app", "/opt/venv/bin", "/var/tmp", "/etc", "/"):
    target = os.path.join(folder, "probe-%d" % os.getpid())
    try:
        with open(target, "w") as f:
            f.write("x")
        os.unlink(target)
        tries[folder] = "written"
    except OSError as exc:
        tries[folder] = exc.strerror
status = dict(line.split(":", 1) for line in open("/proc/1/status") if ":" in line)
print(json.dumps({
    "writable": writable,
    "tries": tries,
    "pid1_uid": status["Uid"].split(),
    "pid1_gid": status["Gid"].split(),
    "pid1_cmdline": open("/proc/1/cmdline").read().split("\\0"),
    "my_uid": os.getuid(),
}))
"""


def caller_token(store_id: str, scope: str = "credentials:read invoke") -> str:
    return mint(kid=HS_KID, secret=HS_SECRET, sub="svc-image-test", scope=scope,
                audience=AUDIENCE, ttl_seconds=300, stores=[store_id])  # fmt: skip


def oauth_install(broker: Container, neto_server: FakeNetoServer, domain: str, store_id: str):
    """What the merchant's browser does: the broker's install link, Neto's approve page,
    and back to the broker's callback, which exchanges the code with Neto."""
    start = httpx.get(f"{broker.url}/oauth/install", params={"store_domain": domain})
    assert start.status_code == 302, start.text
    authorize = start.headers["location"]
    assert authorize.startswith(f"{neto_server.url}/oauth/v2/auth?"), authorize
    assert httpx.get(authorize).status_code == 200
    approved = httpx.post(
        f"{neto_server.url}/oauth/v2/approve",
        data={**query_of(authorize), "store_id": store_id, "decision": "approve"},
    )
    assert approved.status_code == 302, approved.text
    callback = approved.headers["location"]
    assert callback.startswith(f"{broker.url}/oauth/callback?"), callback
    done = httpx.get(callback)
    assert done.status_code == 200, done.text
    assert neto_server.fake.stray_requests == []


def test_image_runs_the_server_as_uid_10001_with_the_exec_form_command(image):
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", image).stdout)
    assert config["User"] == f"{UID}:{UID}"
    assert config["Cmd"] == SERVE and not config.get("Entrypoint")
    assert config["WorkingDir"] == "/app"
    assert config["StopSignal"] == "SIGTERM"
    assert TMP in config["Volumes"]
    assert any(e == "BROKER_ENV=production" for e in config["Env"])


def test_broker_migrate_brings_the_image_database_to_head(migrated, image_database_url):
    head = ScriptDirectory.from_config(alembic_config(image_database_url)).get_current_head()

    async def version() -> Any:
        engine = create_async_engine(image_database_url)
        async with engine.connect() as conn:
            found = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        await engine.dispose()
        return found

    assert asyncio.run(version()) == head


def test_server_runs_as_uid_10001_and_can_write_only_to_tmp(broker):
    result = broker.exec("python", "-c", PROBE)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["pid1_uid"] == [str(UID)] * 4 and seen["pid1_gid"] == [str(UID)] * 4, seen
    # Exec form: `broker serve` itself is PID 1 and gets docker stop's SIGTERM.
    assert seen["pid1_cmdline"][1:4] == ["/opt/venv/bin/broker", "serve", "--host"], seen
    assert seen["my_uid"] == UID
    assert seen["writable"] == [TMP], f"writable outside {TMP}: {seen['writable']}"
    assert seen["tries"].pop(TMP) == "written"
    assert set(seen["tries"].values()) == {"Read-only file system"}, seen["tries"]


def test_readyz_and_healthz_answer_200(broker):
    ready = httpx.get(f"{broker.url}/readyz")
    assert ready.status_code == 200, ready.text
    assert httpx.get(f"{broker.url}/healthz").status_code == 200


def test_oauth_install_then_bundle_and_invoke_through_the_container(
    broker, neto: FakeNeto, neto_server: FakeNetoServer, image_database_url
):
    domain, store_id = "image-shop.example.com", "N7001"
    oauth_install(broker, neto_server, domain, store_id)
    token = neto.credentials[domain]["x_secret_key"]
    assert [r.form["code"] for r in neto.token_requests] != []

    auth = {"Authorization": f"Bearer {caller_token(store_id)}"}
    bundle = httpx.get(f"{broker.url}/credentials/{store_id}", headers=auth)
    assert bundle.status_code == 200, bundle.text
    body = bundle.json()
    assert body["store_domain"] == domain and body["auth_method"] == "oauth"
    assert body["headers"] == {"X_ACCESS_KEY": CLIENT_ID, "X_SECRET_KEY": token}
    assert body["api_url"] == f"{neto_server.url}/{domain}/do/WS/NetoAPI"
    assert bundle.headers["cache-control"] == "no-store"

    sent = {"Filter": {"SKU": ["IMG-1"]}}
    invoked = httpx.post(f"{broker.url}/invoke/{store_id}/GetItem", headers=auth, json=sent)
    assert invoked.status_code == 200, invoked.text
    assert invoked.json()["Ack"] == "Success"
    [seen] = [seen for seen in neto.api_requests if seen.action == "GetItem"]
    assert seen.path == f"/{domain}/do/WS/NetoAPI"
    assert seen.headers["x_secret_key"] == token and seen.json() == sent


def test_docker_stop_finishes_the_in_flight_request_and_exits_0(
    serve, neto: FakeNeto, neto_server: FakeNetoServer
):
    broker = serve()
    domain, store_id = "image-stop.example.com", "N7002"
    oauth_install(broker, neto_server, domain, store_id)
    neto.api_delay = 3.0  # the request is still upstream when SIGTERM arrives
    auth = {"Authorization": f"Bearer {caller_token(store_id)}"}
    answers: list[httpx.Response | BaseException] = []

    def call() -> None:
        url = f"{broker.url}/invoke/{store_id}/GetItem"
        try:
            answers.append(httpx.post(url, headers=auth, json={}, timeout=GRACE_SECONDS + 10))
        except BaseException as exc:
            answers.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 10

    # The invoke itself, not some other call (the health sweep verifies new installs).
    def invoked() -> bool:
        return any(seen.action == "GetItem" for seen in neto.api_requests)

    while not invoked() and time.monotonic() < deadline:
        time.sleep(0.02)
    sent = [getattr(answer, "text", answer) for answer in answers]
    assert invoked(), f"the invoke never reached Neto: {sent!r}\n{broker.logs()}"

    started = time.monotonic()
    stopped = docker("stop", "--time", str(GRACE_SECONDS), broker.name, timeout=GRACE_SECONDS + 30)
    took = time.monotonic() - started
    caller.join(timeout=GRACE_SECONDS + 15)

    state = broker.state()
    assert stopped.returncode == 0 and not state["Running"]
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}:\n{broker.logs()}"
    assert took < GRACE_SECONDS, f"docker stop took {took:.1f} s (SIGKILL comes at {GRACE_SECONDS})"
    [answer] = answers
    assert isinstance(answer, httpx.Response), f"the in-flight request failed: {answer!r}"
    assert answer.status_code == 200 and answer.json()["Ack"] == "Success", answer.text
    print(f"docker stop: {took:.2f} s with one request in flight")


def test_runtime_holds_no_compiler_and_pip_check_is_clean(image):
    tools = ["gcc", "cc", "c++", "g++", "clang", "make", "ld", "as"]
    found = docker("run", "--rm", *RUN_FLAGS, image, "python", "-c",
                   f"import shutil; print([t for t in {tools!r} if shutil.which(t)])")  # fmt: skip
    assert found.stdout.strip() == "[]", f"build tools in the runtime image: {found.stdout}"
    check = docker("run", "--rm", *RUN_FLAGS, image, "python", "-m", "pip", "check", check=False)
    assert check.returncode == 0, f"pip check:\n{check.stdout}{check.stderr}"
    assert "No broken requirements found" in check.stdout


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_holds_exactly_the_locked_versions(image):
    lock = (ROOT / "requirements.lock").read_text()
    locked = {
        _normalize(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9][\w.-]*)==(\S+)", lock, re.M)
    }
    listed = docker("run", "--rm", *RUN_FLAGS, image,
                    "python", "-m", "pip", "list", "--format", "json")  # fmt: skip
    installed = {_normalize(p["name"]): p["version"] for p in json.loads(listed.stdout)}
    # pip comes with the venv; the project itself is installed from the source tree.
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert installed.pop("neto-token-broker") == version
    installed.pop("pip")
    assert installed == locked


def test_image_size_stays_under_its_ceiling(image):
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
    print(f"image {image}: {size} bytes")
    assert size < SIZE_CEILING_BYTES, f"image is {size / 1e6:.0f} MB"
