"""`make bench`: the broker's hot paths beside their ceilings, measured in one run.

Absolute numbers on a shared 2-core machine are noise; ratios measured in the same run,
interleaved (A B A B) to spread the noise, are the result. See docs/performance.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
BIN = Path(sys.executable).parent
TOTAL_INSTALLS = int(os.environ.get("BENCH_INSTALLS", "100000"))
SMALL_INSTALLS = 1000
DURATION = int(os.environ.get("BENCH_SECONDS", "8"))
# Three rounds: a median of three sets the noisiest run aside; of two it averages both.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
CONNECTIONS = 32
SLOW_CONNECTIONS = 256
SLOW_DELAY = 0.2
ENC_KEY = "bench1:" + "A" * 43  # 32 zero bytes, url-safe base64: fine for a benchmark
HS_SECRET = "bench-hs256-secret-" + "b" * 32
CLIENT_ID = "bench-client-id"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, path: str = "/healthz", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Any:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, start_new_session=True)  # fmt: skip
        try:
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def broker_env(database_url: str, upstream_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BROKER_ENV="production",
        BROKER_DATABASE_URL=database_url,
        BROKER_ENCRYPTION_KEYS=ENC_KEY,
        BROKER_JWT_HS256_KEYS=f"hs1:{HS_SECRET}",
        BROKER_NETO_CLIENT_ID=CLIENT_ID,
        BROKER_NETO_CLIENT_SECRET="bench-client-secret-" + "c" * 24,
        BROKER_NETO_API_URL_TEMPLATE=f"http://127.0.0.1:{upstream_port}/{{store_domain}}/do/WS/NetoAPI",
        BROKER_EGRESS_ALLOW_PRIVATE="true",
        BROKER_LOG_LEVEL="INFO",
        # The health sweep verifies installs against the upstream in the background: work
        # that is not the request path being measured.
        BROKER_HEALTH_SWEEP_HOURS="0",
    )
    return env


# -- seeding, through the service's own sealing and repository code ---------------------


async def seed(database_url: str, start: int, stop: int) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from service.config import normalize_database_url
    from service.db import create_sessionmaker
    from service.installs.repository import insert_many
    from service.security.crypto import KeyRing

    engine = create_async_engine(normalize_database_url(database_url))
    maker = create_sessionmaker(engine)
    keyring = KeyRing.parse(ENC_KEY)
    batch = 5000
    for first in range(start, stop, batch):
        items = []
        for n in range(first, min(first + batch, stop)):
            sid = f"S{n:06d}"
            oauth = n % 2 == 0
            items.append(
                {
                    "store_id": sid,
                    "store_domain": f"store-{n:06d}.example.com",
                    "auth_method": "oauth" if oauth else "api_key",
                    "secret": {"access_token": f"tok_{n:06d}_" + "x" * 32}
                    if oauth
                    else {"username": f"user{n}", "api_key": f"key_{n:06d}_" + "y" * 32},
                    "user": {"id": str(n), "first_name": "Bench", "email": f"o{n}@example.com"},
                    "billing": {"street1": f"{n} Bench St", "city": "Brisbane"},
                }
            )
        async with maker() as session, session.begin():
            await insert_many(session, keyring, items)
    await engine.dispose()


def reset_database(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        path = Path(database_url.split(":///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    else:
        sys.path.insert(0, str(ROOT))
        from tests.support import reset_database as reset

        asyncio.run(reset(database_url))
    env = dict(os.environ, BROKER_DATABASE_URL=database_url)
    subprocess.run([str(BIN / "broker"), "migrate"], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


# -- load ---------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def lua(name: str, body: str) -> Path:
    path = WORK / f"{name}.lua"
    path.write_text(body)
    return path


def credentials_script(token: str, installs: int) -> Path:
    return lua(
        f"credentials_{installs}",
        f"""
math.randomseed(os.time())
local headers = {{["Authorization"] = "Bearer {token}"}}
request = function()
  local path = string.format("/credentials/S%06d", math.random(0, {installs - 1}))
  return wrk.format("GET", path, headers)
end
""",
    )


def invoke_script(token: str, installs: int) -> Path:
    return lua(
        f"invoke_{installs}",
        f"""
math.randomseed(os.time())
local headers = {{["Authorization"] = "Bearer {token}", ["Content-Type"] = "application/json"}}
local body = '{{"Filter": {{"SKU": ["SKU-1"], "OutputSelector": ["Name", "Price"]}}}}'
request = function()
  local path = string.format("/invoke/S%06d/GetItem", math.random(0, {installs - 1}))
  return wrk.format("POST", path, headers, body)
end
""",
    )


def hot_read_script(token: str) -> Path:
    """Every caller reads the same item of the same store: the reads coalesce."""
    return lua(
        "hot_read",
        f"""
local headers = {{["Authorization"] = "Bearer {token}", ["Content-Type"] = "application/json"}}
local body = '{{"Filter": {{"SKU": ["HOT-1"], "OutputSelector": ["AvailableSellQuantity"]}}}}'
request = function()
  return wrk.format("POST", "/invoke/S000001/GetItem", headers, body)
end
""",
    )


def metric_total(port: int, name: str) -> float:
    """The sum of a metric's series on the broker's /metrics."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    pattern = rb"^" + re.escape(name.encode()) + rb"(?:\{[^}]*\})? (\S+)$"
    return sum(float(v) for v in re.findall(pattern, data, re.M))


def neto_door_script(token: str, installs: int) -> Path:
    """The same GetItem as `invoke_script`, sent as a Neto client sends it."""
    return lua(
        f"neto_{installs}",
        f"""
math.randomseed(os.time())
local headers = {{["NETOAPI_ACTION"] = "GetItem", ["NETOAPI_USERNAME"] = "bench",
                 ["NETOAPI_KEY"] = "{token}", ["Content-Type"] = "application/json",
                 ["Accept"] = "application/json"}}
local body = '{{"Filter": {{"SKU": ["SKU-1"], "OutputSelector": ["Name", "Price"]}}}}'
request = function()
  local path = string.format("/neto/S%06d/do/WS/NetoAPI", math.random(0, {installs - 1}))
  return wrk.format("POST", path, headers, body)
end
""",
    )


def upstream_script() -> Path:
    return lua(
        "upstream",
        """
local headers = {["NETOAPI_ACTION"] = "GetItem", ["Content-Type"] = "application/json",
                 ["Accept"] = "application/json", ["X_ACCESS_KEY"] = "id", ["X_SECRET_KEY"] = "tok"}
local body = '{"Filter": {"SKU": ["SKU-1"], "OutputSelector": ["Name", "Price"]}}'
request = function()
  return wrk.format("POST", "/store-000001.example.com/do/WS/NetoAPI", headers, body)
end
""",
    )


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def wrk(name: str, port: int, script: Path, path: str = "/", connections: int = CONNECTIONS,
        duration: int = DURATION) -> Result:  # fmt: skip
    out = subprocess.run(
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--latency",
         "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0
    )
    # Anchored: "90.50%" in the thread-stats lines must not pass for the 50th percentile.
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    return Result(name, rps, p50, p99, total, errors)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set (VmHWM) of the server process and its workers."""
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                      text=True).stdout.split()]  # fmt: skip
    peak = 0.0
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        m = re.search(r"VmHWM:\s+(\d+) kB", status)
        if m:
            peak = max(peak, int(m.group(1)) / 1024)
    return peak


def median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def best(results: list[Result]) -> Result:
    """Median throughput across rounds; latency from the same rounds (median)."""
    return Result(
        results[0].name,
        median([r.rps for r in results]),
        median([r.p50_ms for r in results]),
        median([r.p99_ms for r in results]),
        sum(r.requests for r in results),
        sum(r.errors for r in results),
    )


class OtlpSink:
    """A local OTLP/HTTP receiver for the traced broker: accepts POST /v1/traces and
    counts the spans it decodes (in this process, a thread: none of the broker's CPU)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        sink = self
        self.spans = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                decoded = ExportTraceServiceRequest()
                decoded.ParseFromString(body)
                sink.spans += sum(
                    len(scope.spans) for rs in decoded.resource_spans for scope in rs.scope_spans
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def traced_invoke(database_url: str, upstream_port: int, token: str, broker_flags: list[str],
                  plain_port: int) -> tuple[list[Result], list[Result], float]:  # fmt: skip
    """/invoke of a broker exporting every request's spans by OTLP to a local sink,
    interleaved with the same on the broker without tracing (`plain_port`, running):
    what tracing on costs. Short rounds: the figure is a ratio of two runs side by side."""
    sink = OtlpSink()
    port = free_port()
    env = dict(broker_env(database_url, upstream_port), OTEL_EXPORTER_OTLP_ENDPOINT=sink.url)
    script = invoke_script(token, SMALL_INSTALLS)
    seconds = max(2, DURATION // 2)
    try:
        with process([str(BIN / "broker"), "serve", "--port", str(port), *broker_flags], env,
                     WORK / "broker-traced.log"):  # fmt: skip
            wait_http(port)
            wait_cache_warm(port, SMALL_INSTALLS)
            answered = wrk("warmup", port, script, duration=2).requests
            wrk("warmup", plain_port, script, duration=2)
            plain, traced = [], []
            for _ in range(ROUNDS):
                plain.append(wrk("invoke_untraced", plain_port, script, duration=seconds))
                traced.append(wrk("invoke_traced", port, script, duration=seconds))
                answered += traced[-1].requests
        # Read once the broker has stopped: its shutdown exports what was still batched.
        return plain, traced, sink.spans / answered if answered else float("nan")
    finally:
        sink.close()


def main() -> int:
    if shutil.which("wrk") is None:
        print("wrk is not installed (make bench installs it: apt-get install wrk)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from service.security.callers import mint

    WORK.mkdir(parents=True, exist_ok=True)
    database_url = os.environ.get("BROKER_BENCH_DATABASE_URL") or (
        f"sqlite+aiosqlite:///{WORK}/bench.db"
    )
    backend = "postgresql" if database_url.startswith("postgres") else "sqlite"
    token = mint(kid="hs1", secret=HS_SECRET, sub="bench", scope="credentials:read invoke",
                 audience="neto-token-broker", ttl_seconds=3600, stores=["*"])  # fmt: skip
    uvicorn_flags = ["--workers", str(WORKERS)]
    ports = {
        name: free_port()
        for name in ("broker", "ceiling", "passthrough", "upstream", "slow", "broker_slow")
    }

    print(f"seeding {SMALL_INSTALLS} installs ({backend})...", flush=True)
    reset_database(database_url)
    asyncio.run(seed(database_url, 0, SMALL_INSTALLS))

    up_env = dict(os.environ)
    results: dict[str, Any] = {}
    py = str(BIN / "python")
    with process([py, "-m", "bench.upstream", "--port", str(ports["upstream"])], up_env,
                 WORK / "upstream.log"):  # fmt: skip
        wait_tcp(ports["upstream"])
        # Scale, small: p50/p99 of /credentials with 1,000 installs.
        env = broker_env(database_url, ports["upstream"])
        with process([str(BIN / "broker"), "serve", "--port", str(ports["broker"]), *uvicorn_flags],
                     env, WORK / "broker-1k.log"):  # fmt: skip
            wait_http(ports["broker"])
            wait_cache_warm(ports["broker"], SMALL_INSTALLS)
            script = credentials_script(token, SMALL_INSTALLS)
            wrk("warmup", ports["broker"], script, duration=2)
            small = [wrk("credentials_1k", ports["broker"], script) for _ in range(ROUNDS)]
            # Tracing on (OTLP to a local sink) against this broker, tracing off.
            print("tracing on vs off...", flush=True)
            untraced, traced, spans_per_answer = traced_invoke(
                database_url, ports["upstream"], token, uvicorn_flags, ports["broker"]
            )

        print(f"seeding up to {TOTAL_INSTALLS} installs...", flush=True)
        started = time.monotonic()
        asyncio.run(seed(database_url, SMALL_INSTALLS, TOTAL_INSTALLS))
        results["seed_seconds"] = round(time.monotonic() - started, 1)

        ceiling_cmd = [str(BIN / "uvicorn"), "bench.ceiling:app", "--port", str(ports["ceiling"]),
                       "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                       "--log-level", "warning", *uvicorn_flags]  # fmt: skip
        passthrough_cmd = [str(BIN / "uvicorn"), "bench.passthrough:app", "--port",
                           str(ports["passthrough"]), "--loop", "uvloop", "--http", "httptools",
                           "--no-access-log", "--log-level", "warning", *uvicorn_flags]  # fmt: skip
        passthrough_env = dict(up_env, BENCH_UPSTREAM=f"127.0.0.1:{ports['upstream']}")
        broker_cmd = [str(BIN / "broker"), "serve", "--port", str(ports["broker"]), *uvicorn_flags]
        with (
            process(ceiling_cmd, up_env, WORK / "ceiling.log"),
            process(passthrough_cmd, passthrough_env, WORK / "passthrough.log"),
            process(broker_cmd, env, WORK / "broker.log") as broker,
        ):
            wait_http(ports["ceiling"], "/credentials/x")
            wait_tcp(ports["passthrough"])
            wait_http(ports["broker"])
            results["cache_warmup_seconds"] = round(
                wait_cache_warm(ports["broker"], TOTAL_INSTALLS), 1
            )
            cred = credentials_script(token, TOTAL_INSTALLS)
            inv = invoke_script(token, TOTAL_INSTALLS)
            door = neto_door_script(token, TOTAL_INSTALLS)
            up = upstream_script()
            ceiling = lua("ceiling", "")
            wrk("warmup", ports["ceiling"], ceiling, path="/credentials/S000001", duration=2)
            wrk("warmup", ports["broker"], cred, duration=2)
            wrk("warmup", ports["broker"], inv, duration=2)
            wrk("warmup", ports["broker"], door, duration=2)
            wrk("warmup", ports["passthrough"], inv, duration=2)
            names = ("ceiling", "credentials", "upstream", "passthrough", "invoke", "neto_door")
            rounds: dict[str, list[Result]] = {k: [] for k in names}
            for n in range(ROUNDS):
                print(f"round {n + 1}/{ROUNDS}...", flush=True)
                rounds["ceiling"].append(
                    wrk("ceiling", ports["ceiling"], ceiling, path="/credentials/S000001")
                )
                rounds["credentials"].append(wrk("credentials", ports["broker"], cred))
                rounds["upstream"].append(wrk("upstream", ports["upstream"], up))
                rounds["passthrough"].append(wrk("passthrough", ports["passthrough"], inv))
                rounds["invoke"].append(wrk("invoke", ports["broker"], inv))
                rounds["neto_door"].append(wrk("neto_door", ports["broker"], door))
            large = rounds["credentials"]
            # One connection at a time, nothing else running: what a lone caller waits.
            idle = [wrk("invoke_idle", ports["broker"], inv, connections=1) for _ in range(ROUNDS)]
            peak = peak_rss_mb(broker.pid)

    # The slow-upstream case: 200 ms upstream, 256 concurrent callers through /invoke.
    with (
        process([py, "-m", "bench.upstream", "--port", str(ports["slow"]), "--delay",
                 str(SLOW_DELAY)], up_env, WORK / "slow.log"),
        process([str(BIN / "broker"), "serve", "--port", str(ports["broker_slow"]), *uvicorn_flags],
                broker_env(database_url, ports["slow"]), WORK / "broker-slow.log") as slow_broker,
    ):  # fmt: skip
        wait_tcp(ports["slow"])
        wait_http(ports["broker_slow"])
        wait_cache_warm(ports["broker_slow"], TOTAL_INSTALLS)
        inv = invoke_script(token, TOTAL_INSTALLS)
        wrk("warmup", ports["broker_slow"], inv, connections=SLOW_CONNECTIONS, duration=3)
        slow = [wrk("invoke_slow", ports["broker_slow"], inv, connections=SLOW_CONNECTIONS)
                for _ in range(ROUNDS)]  # fmt: skip
        # 64 callers reading one hot item of one store through a 200 ms Neto: identical
        # reads in flight share a call (neto/flights.py). Share = Neto calls per answer.
        hot_script = hot_read_script(token)
        sent_before = metric_total(ports["broker_slow"], "broker_upstream_requests_total")
        hot = wrk("invoke_hot", ports["broker_slow"], hot_script, connections=64)
        sent = metric_total(ports["broker_slow"], "broker_upstream_requests_total") - sent_before
        hot_share = sent / hot.requests if hot.requests else float("nan")
        peak = max(peak, peak_rss_mb(slow_broker.pid))

    # The adaptive store budget against stores that leave less than the budget (a
    # controlled clock: bench/adaptive.py).
    from bench import adaptive

    adapted = adaptive.main()
    from bench import notify  # Neto's notifications: a burst of 1,000 for 100 stores

    results["notify"] = notify.main(database_url)
    m = {k: best(v) for k, v in rounds.items()}
    small_r, large_r, slow_r, idle_r = best(small), best(large), best(slow), best(idle)
    untraced_r, traced_r = best(untraced), best(traced)
    limit = SLOW_CONNECTIONS / SLOW_DELAY
    figures = {
        "credentials_vs_ceiling": m["credentials"].rps / m["ceiling"].rps,
        "credentials_p99_ms": m["credentials"].p99_ms,
        "invoke_vs_passthrough": m["invoke"].rps / m["passthrough"].rps,
        "neto_door_vs_passthrough": m["neto_door"].rps / m["passthrough"].rps,
        "slow_upstream_vs_littles_law": slow_r.rps / limit,
        "p50_100k_vs_1k": large_r.p50_ms / small_r.p50_ms if small_r.p50_ms else float("nan"),
        "peak_rss_mb": peak,
        "invoke_idle_p99_ms": idle_r.p99_ms,
        "hot_read_upstream_share": hot_share,
        "adaptive_429s_per_5min": float(max(a.further_429s for a in adapted)),
        "adaptive_goodput_share": min(a.goodput for a in adapted),
        # Reported, not a regression bar: tracing is off by default, and `invoke` above is
        # measured off. Exported spans per traced answer show the export kept up.
        "invoke_traced_vs_untraced": traced_r.rps / untraced_r.rps,
        # The endpoint's p99 in a burst of 1,000 notifications (bench/notify.py).
        "notify_p99_ms": results["notify"]["p99_ms"],
    }
    bars = {
        "credentials_vs_ceiling": (">=", 0.6),
        "credentials_p99_ms": ("<=", 20.0),
        "invoke_vs_passthrough": (">=", 1.0),
        "neto_door_vs_passthrough": (">=", 1.0),
        "slow_upstream_vs_littles_law": (">=", 0.9),
        "p50_100k_vs_1k": ("<=", 1.10),
        "peak_rss_mb": ("<=", 200.0),
        "invoke_idle_p99_ms": ("<=", 5.0),
        "hot_read_upstream_share": ("<=", 0.1),
        "adaptive_429s_per_5min": ("<=", 1.0),
        "adaptive_goodput_share": (">=", 0.7),
        "invoke_traced_vs_untraced": (">=", 0.5),
        "notify_p99_ms": ("<=", 50.0),
    }
    errors = sum(r.errors for r in (*m.values(), small_r, large_r, slow_r, idle_r, hot,
                                    untraced_r, traced_r))  # fmt: skip
    all_results = [*m.values(), small_r, slow_r, idle_r, hot, untraced_r, traced_r]
    print()
    print(
        f"{'measurement':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'requests':>10}{'errors':>8}"
    )
    for r in all_results:
        print(
            f"{r.name:<16}{r.rps:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.requests:>10}{r.errors:>8}"
        )
    print()
    print(f"{'figure':<30}{'value':>10}  bar")
    verdicts = {}
    for key, value in figures.items():
        op, bar = bars[key]
        ok = value >= bar if op == ">=" else value <= bar
        verdicts[key] = ok
        print(f"{key:<30}{value:>10.3f}  {op} {bar}  {'PASS' if ok else 'FAIL'}")
    print(f"slow-upstream limit (Little's law): {limit:.0f} req/s; achieved {slow_r.rps:.0f}")
    print(f"tracing on: {spans_per_answer:.2f} spans exported per traced answer")
    results["traced_spans_per_answer"] = round(spans_per_answer, 2)
    for a in adapted:
        print(
            f"adaptive budget, {a.left_over}/min left of {adaptive.BUDGET}: {a.further_429s} "
            f"further 429s in {adaptive.MINUTES} min, {a.goodput:.1%} served"
        )
    results.update(
        machine={
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        backend=backend,
        workers=WORKERS,
        duration_seconds=DURATION,
        rounds=ROUNDS,
        installs=TOTAL_INSTALLS,
        measurements=[asdict(r) for r in all_results],
        figures=figures,
        bars={k: {"op": op, "bar": bar, "pass": verdicts[k]} for k, (op, bar) in bars.items()},
        errors=errors,
        adaptive=[asdict(a) for a in adapted],
    )
    (ROOT / "bench" / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if errors:
        print(f"{errors} requests failed: this run is not a result", file=sys.stderr)
        return 1
    return 0


def wait_cache_warm(port: int, expected: int, timeout: float = 180) -> float:
    """A production replica runs with a warm store cache: wait until the broker's start-up
    preload holds every install (or stops growing). Returns the seconds it took."""
    started = time.monotonic()
    # Stopped growing: no new high for a few seconds (background work may evict a few
    # entries and reload them, so the count itself need not hold still).
    last, stable_since = -1.0, time.monotonic()
    while time.monotonic() - started < timeout:
        entries = metric_total(port, "broker_store_cache_entries")
        if entries >= expected:
            break
        if entries > last:
            last, stable_since = entries, time.monotonic()
        elif time.monotonic() - stable_since > 5:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def wait_tcp(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


if __name__ == "__main__":
    sys.exit(main())
