"""A fast fake Neto store API for the benchmark: a bare ASGI app on uvicorn with the same
server settings as the broker and the ceiling (uvloop, httptools), answering every POST
with a small GetItem response, optionally after a delay.

The direct-to-upstream figure is what a caller gets talking to such a server itself; the
broker's /invoke is measured against it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import uvicorn

BODY = json.dumps(
    {
        "Item": [{"ID": "1", "SKU": "SKU-1", "Name": "Benchmark item", "Price": "10.00"}],
        "CurrentTime": "2026-01-01 00:00:00",
        "Ack": "Success",
    }
).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


def make_app(delay: float) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # drain the request body
            message = await receive()
            more = message.get("more_body", False)
        if delay:
            await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.delay),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
