"""`broker serve --workers 2`: one scrape of /metrics reports what every worker counted."""

from __future__ import annotations

import re

import httpx

from tests.support import metric


def test_metrics_sum_over_all_workers(broker_server, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = broker_server(workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))

    def worker_pids() -> set[str]:
        return {m.group(1) for f in metrics_dir.iterdir()
                if (m := re.match(r"counter_(\d+)\.db$", f.name))}  # fmt: skip

    sent = 0
    # "Connection: close": a new connection per request, which the kernel hands to either
    # worker, so both count some.
    with httpx.Client(base_url=server.url, headers={"Connection": "close"}) as client:
        while sent < 40 or (len(worker_pids()) < 2 and sent < 400):
            assert client.get("/healthz").status_code == 200
            sent += 1
        assert len(worker_pids()) == 2, "both workers should have served requests"
        for _ in range(4):  # whichever worker answers the scrape reports the same sum
            text = client.get("/metrics").text
            count = metric(
                text, "broker_requests_total", method="GET", route="/healthz", status="200"
            )
            assert count == sent, f"a scrape saw {count} of {sent} requests"
            assert metric(text, "broker_installs", status="active") == 0
