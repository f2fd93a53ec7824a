"""`make demo`: the broker wired to a local Neto emulator, for a five-minute tour.

Starts the tests' fake Neto (`python -m tests.fakes.neto`) and `broker serve` in
development mode on its own SQLite database (./var/demo.db, migrated first), prints the
links and an operator token, and stops both on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENT_ID = "demo-client-id"
CLIENT_SECRET = "demo-client-secret-" + "x" * 24  # the emulator's default; not a real secret
SHOP = "demo-shop.example.com"


def wait_for(url: str, process: subprocess.Popen[bytes], name: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{name} exited with {process.returncode}; see the lines above")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    sys.exit(f"{name} did not answer {url} within {seconds:.0f} s")


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # `kill` (SIGTERM) stops the demo as cleanly as Ctrl-C does: children included.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="the broker's port")
    parser.add_argument("--neto-port", type=int, default=8001, help="the emulator's port")
    parser.add_argument("--database", default="var/demo.db", help="the demo's SQLite file")
    args = parser.parse_args()

    broker_url = f"http://localhost:{args.port}"
    neto_url = f"http://127.0.0.1:{args.neto_port}"
    bin_dir = Path(sys.executable).parent
    broker = str(bin_dir / "broker")
    (ROOT / args.database).parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_ENV="development",  # throw-away keys under ./var/, shared with `token mint`
        BROKER_DATABASE_URL=f"sqlite+aiosqlite:///{ROOT / args.database}",
        BROKER_PUBLIC_URL=broker_url,
        BROKER_NETO_CLIENT_ID=CLIENT_ID,
        BROKER_NETO_CLIENT_SECRET=CLIENT_SECRET,
        BROKER_NETO_OAUTH_URL=f"{neto_url}/oauth/v2",
        BROKER_NETO_API_URL_TEMPLATE=f"{neto_url}/{{store_domain}}/do/WS/NetoAPI",
        BROKER_EGRESS_ALLOW_PRIVATE="true",  # the emulator is on loopback
    )

    subprocess.run([broker, "migrate"], env=env, cwd=ROOT, check=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        neto = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.neto", "--port", str(args.neto_port),
             "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET],
            cwd=ROOT, env=env,
        )  # fmt: skip
        processes.append(neto)
        wait_for(f"{neto_url}/oauth/v2/auth", neto, "the Neto emulator")
        server = subprocess.Popen(
            [broker, "serve", "--host", "127.0.0.1", "--port", str(args.port), "--no-banner"],
            cwd=ROOT,
            env=env,
        )
        processes.append(server)
        wait_for(f"http://127.0.0.1:{args.port}/readyz", server, "the broker")
        token = subprocess.run(
            [broker, "token", "mint", "--sub", "demo-operator",
             "--scope", "installs:admin credentials:read invoke",
             "--stores", "*", "--actions", "*", "--ttl", "8h"],
            env=env, cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        print(BANNER.format(broker=broker_url, neto=neto_url, shop=SHOP, token=token), flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        sys.exit("a demo process stopped; shutting down the other")
    except KeyboardInterrupt:
        print("\nstopping the demo", flush=True)
    finally:
        stop(processes)


BANNER = """
================================================================================
 Neto Token Broker demo: the broker on {broker}, a Neto emulator on {neto}

 1. Install the add-on as a merchant would (approve on the emulator's page):
      {broker}/oauth/install?store_domain={shop}
 2. Open Swagger UI, press Authorize, paste the token below, try GET /installs:
      {broker}/docs
 3. Call Neto through the broker (use the store id you approved, e.g. N10001):
      curl -X POST {broker}/invoke/N10001/GetItem \\
        -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \\
        -d '{{"Filter": {{"SKU": ["demo"]}}}}'
 4. Or keep a Neto client and change only its endpoint and key (Neto's own protocol):
      curl -X POST {broker}/neto/N10001/do/WS/NetoAPI \\
        -H "NETOAPI_ACTION: GetItem" -H "NETOAPI_KEY: $TOKEN" \\
        -H "Content-Type: application/json" -H "Accept: application/json" \\
        -d '{{"Filter": {{"SKU": ["demo"]}}}}'
    In Python, in Neto's style (needs `pip install requests`; paste as is):
python3 - <<'PY'
import os, requests
neto = requests.Session()
neto.headers.update({{"NETOAPI_USERNAME": "demo", "NETOAPI_KEY": os.environ["TOKEN"],
                     "Accept": "application/json"}})
r = neto.post("{broker}/neto/N10001/do/WS/NetoAPI", headers={{"NETOAPI_ACTION": "GetItem"}},
              json={{"Filter": {{"SKU": ["demo"]}}}})
r.raise_for_status()
print(r.json())
PY

 Operator token (8 h; scopes installs:admin credentials:read invoke, all stores):
TOKEN={token}
 (run `export TOKEN=...` with the line above before the commands)

 Ctrl-C stops both.
================================================================================
"""


if __name__ == "__main__":
    main()
