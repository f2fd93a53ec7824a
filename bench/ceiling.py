"""The ceiling: a bare FastAPI app whose one route returns a bundle-sized JSON body with
no auth and no database, run on the same uvicorn settings as the broker."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

app = FastAPI()

BUNDLE = {
    "bundle_id": "bnd_3q2x9yS0c8VbqkzE5l0wXg",
    "store_id": "S000001",
    "store_domain": "store-000001.example.com",
    "auth_method": "oauth",
    "api_url": "https://store-000001.example.com/do/WS/NetoAPI",
    "headers": {"X_ACCESS_KEY": "bench-client-id", "X_SECRET_KEY": "tok_" + "x" * 40},
    "issued_at": "2026-01-01T00:00:00Z",
    "expires_at": "2026-01-01T00:05:00Z",
}


@app.get("/credentials/{store_id}")
async def bundle(store_id: str) -> JSONResponse:
    return JSONResponse(BUNDLE, headers={"Cache-Control": "no-store"})
