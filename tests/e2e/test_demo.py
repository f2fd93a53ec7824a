"""`make demo` (scripts/demo.py): a newcomer's click-through works end to end."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

from tests.support import ROOT, free_port


def read_until_token(process: subprocess.Popen[str], seconds: float = 60) -> str:
    """The demo's banner ends with TOKEN=...; a thread reads so a timeout can fire."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    deadline, seen = time.monotonic() + seconds, []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith("TOKEN="):
            return line.removeprefix("TOKEN=").strip()
    raise AssertionError("the demo printed no token:\n" + "".join(seen[-40:]))


def test_demo_installs_a_store_through_the_emulator_and_stops_on_ctrl_c(tmp_path):
    port, neto_port = free_port(), free_port()
    demo = subprocess.Popen(
        [sys.executable, "scripts/demo.py", "--port", str(port), "--neto-port", str(neto_port),
         "--database", str(tmp_path / "demo.db")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        token = read_until_token(demo)
        broker = f"http://localhost:{port}"
        with httpx.Client(timeout=10) as client:
            # The merchant's browser: install link -> emulator's approve page -> callback.
            start = client.get(
                f"{broker}/oauth/install", params={"store_domain": "demo-shop.example.com"}
            )
            assert start.status_code == 302
            page = client.get(start.headers["location"])
            form = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
            form.update(decision="approve", store_id="N10001")
            approved = client.post(f"http://127.0.0.1:{neto_port}/oauth/v2/approve", data=form)
            callback = client.get(approved.headers["location"])
            assert callback.status_code == 200, callback.text
            # The operator, with the printed token.
            listed = client.get(f"{broker}/installs", headers={"Authorization": f"Bearer {token}"})
            assert [i["store_id"] for i in listed.json()["items"]] == ["N10001"]
            bundle = client.get(
                f"{broker}/credentials/N10001", headers={"Authorization": f"Bearer {token}"}
            )
            assert bundle.json()["api_url"].startswith(f"http://127.0.0.1:{neto_port}/")
            assert client.get(f"{broker}/docs").status_code == 200
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
        assert demo.stdout is not None
        demo.stdout.close()
    for stopped in (port, neto_port):
        try:
            httpx.get(f"http://127.0.0.1:{stopped}/", timeout=1)
        except httpx.ConnectError:
            continue
        raise AssertionError(f"something still listens on {stopped} after Ctrl-C")
