"""Transport probe: requests/s of a fast local upstream, called directly and through
`POST /invoke`, with 32 concurrent callers (wrk). Not the benchmark (`make bench`); a quick
check that the upstream client does not cap the passthrough.

    python bench/transport_probe.py [--seconds 10] [--connections 32] [--transport aiohttp]

`--transport httpx` runs the broker on httpx's own transport instead of the aiohttp one,
for comparison. Needs `wrk` (apt-get install wrk). Each process (upstream, broker, wrk)
is separate; on a 2-core machine they share the cores, as in the issue's figures.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

from service.security.callers import mint
from service.security.crypto import generate_key

HS_KID, HS_SECRET = "bench", "bench-secret-" + "b" * 40
UPSTREAM = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    BODY = (b'{"Item":[{"ID":"1","SKU":"A-1","Name":"Thing"}],'
            b'"CurrentTime":"2026-01-01 00:00:00","Ack":"Success"}')
    async def api(request):
        await request.read()
        return web.Response(body=BODY, content_type="application/json")
    app = web.Application()
    app.router.add_post("/{store}/do/WS/NetoAPI", api)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)
# The broker, optionally with httpx's stock transport swapped in (comparison only).
BROKER = textwrap.dedent(
    """
    import sys, uvicorn, httpx
    from service import logs
    from service.config import load_settings
    import service.main, service.security.egress as egress
    if sys.argv[2] == "httpx":
        def stock(settings):
            return httpx.AsyncClient(trust_env=False, follow_redirects=False,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))
        service.main.create_http_client = stock
    settings = load_settings()
    logs.configure(settings.log_level)
    app = service.main.create_app(settings)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None,
                access_log=False, loop="uvloop", http="httptools")
    """
)
LUA = """
wrk.method = "POST"
wrk.body = '{"Filter":{"SKU":["A-1"],"OutputSelector":["Name"]}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["NETOAPI_ACTION"] = "GetItem"
{extra}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def wrk(url: str, script: Path, seconds: int, connections: int) -> float:
    threads = min(2, connections)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError("non-2xx answers during the run:\n" + out)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(out)
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--transport", choices=["aiohttp", "httpx"], default="aiohttp")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    up_port, broker_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="probe-") as tmp:
        env = {
            **os.environ,
            "BROKER_ENV": "production",
            "BROKER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/probe.db",
            "BROKER_ENCRYPTION_KEYS": f"k1:{generate_key()}",
            "BROKER_JWT_HS256_KEYS": f"{HS_KID}:{HS_SECRET}",
            "BROKER_NETO_API_URL_TEMPLATE": f"http://127.0.0.1:{up_port}/{{store_domain}}/do/WS/NetoAPI",
            "BROKER_EGRESS_ALLOW_PRIVATE": "true",
            # One store takes all the load here: lift its limits out of the way.
            "BROKER_STORE_MAX_IN_FLIGHT": "1000",
            "BROKER_STORE_RATE_PER_MINUTE": "100000000",
            "BROKER_LOG_LEVEL": "INFO",
        }
        broker_cli = str(Path(sys.executable).parent / "broker")
        subprocess.run([broker_cli, "migrate"], env=env, check=True, capture_output=True)
        procs = [
            subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port)]),
            subprocess.Popen(
                [sys.executable, "-c", BROKER, str(broker_port), args.transport],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ),
        ]  # fmt: skip
        try:
            base = f"http://127.0.0.1:{broker_port}"
            wait_http(base + "/healthz")
            audience = "neto-token-broker"
            admin = mint(kid=HS_KID, secret=HS_SECRET, sub="probe", scope="installs:admin",
                         audience=audience, ttl_seconds=3600)  # fmt: skip
            caller = mint(kid=HS_KID, secret=HS_SECRET, sub="probe", scope="invoke",
                          audience=audience, ttl_seconds=3600, stores=["P1"])  # fmt: skip
            r = httpx.post(
                base + "/installs/api-key",
                json={"store_id": "P1", "store_domain": "probe.example.com",
                      "username": "u", "api_key": "k" * 32},
                headers={"Authorization": f"Bearer {admin}"},
            )  # fmt: skip
            r.raise_for_status()
            direct_script = Path(tmp) / "direct.lua"
            direct_script.write_text(LUA.replace("{extra}", ""))
            broker_script = Path(tmp) / "broker.lua"
            broker_script.write_text(
                LUA.replace("{extra}", f'wrk.headers["Authorization"] = "Bearer {caller}"')
            )
            direct_url = f"http://127.0.0.1:{up_port}/probe.example.com/do/WS/NetoAPI"
            invoke_url = base + "/invoke/P1/GetItem"
            wrk(direct_url, direct_script, 2, args.connections)  # warm-up
            wrk(invoke_url, broker_script, 2, args.connections)
            direct = wrk(direct_url, direct_script, args.seconds, args.connections)
            through = wrk(invoke_url, broker_script, args.seconds, args.connections)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)
    print(f"transport:           {args.transport}")
    print(f"direct upstream:     {direct:10.0f} req/s")
    print(f"through /invoke:     {through:10.0f} req/s")
    print(f"ratio:               {through / direct:10.1%}")


if __name__ == "__main__":
    main()
