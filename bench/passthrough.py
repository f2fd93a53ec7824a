"""The passthrough ceiling: a naive FastAPI proxy. One route that sends the caller's body
to the benchmark's upstream with a shared aiohttp session and returns the answer, with no
auth, no checks and no database, on the same uvicorn settings as the broker.

`/invoke` and the Neto-compatible endpoint, with every check, are measured against it.
The upstream's address comes from BENCH_UPSTREAM (host:port).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import Response

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "127.0.0.1:8001")
session: aiohttp.ClientSession | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await session.close()


app = FastAPI(lifespan=lifespan)


@app.post("/invoke/{store_id}/{action}")
async def invoke(store_id: str, action: str, request: Request) -> Response:
    assert session is not None
    url = f"http://{UPSTREAM}/store-{store_id}.example.com/do/WS/NetoAPI"
    headers = {
        "NETOAPI_ACTION": action,
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X_ACCESS_KEY": "id",
        "X_SECRET_KEY": "tok",
    }
    async with session.post(url, data=await request.body(), headers=headers) as answer:
        body = await answer.read()
        return Response(body, status_code=answer.status, media_type=answer.content_type)
