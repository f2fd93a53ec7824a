"""A real browser: headless Chromium opens /docs, authorises with a minted token, runs
GET /installs with "Try it out", and sees the install. Any request that leaves the
broker's origin fails the test: Swagger UI must work on a network without a CDN."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Request, async_playwright, expect

from tests.support import install_store

CHROMIUM = os.environ.get("BROKER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Kept out of the repository; look at it after a run to see what an operator sees.
SCREENSHOTS = Path(tempfile.gettempdir())

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("persist", [False, True], ids=["default", "persist-opt-in"])
async def test_swagger_ui_authorises_and_lists_installs_offline(
    broker_server, neto, token, database_url, persist
):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (.ci/run does)")
    server = broker_server(**({"BROKER_DOCS_PERSIST_AUTHORIZATION": "true"} if persist else {}))
    async with httpx.AsyncClient(base_url=server.url) as client:
        await install_store(client, neto, "browser-shop.example.com", store_id="N4242")
    jwt = token("installs:read", sub="swagger-operator")
    origin = urlsplit(server.url)
    seen: list[str] = []
    api_calls: list[tuple[str, str | None]] = []
    errors: list[str] = []  # console errors include blocked (CSP) loads

    def record(request: Request) -> None:
        seen.append(request.url)
        if urlsplit(request.url).path == "/installs":
            api_calls.append((request.url, request.headers.get("authorization")))

    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1400})
            page.on("request", record)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{server.url}/docs")
            await expect(page.locator(".swagger-ui .info .title")).to_contain_text(
                "Neto Token Broker"
            )

            await page.locator("button.authorize").first.click()
            modal = page.locator(".modal-ux")
            await modal.locator("input").first.fill(jwt)
            await modal.locator("button.modal-btn.auth.authorize").click()
            await modal.locator("button.btn-done").click()

            operation = page.locator("#operations-installs-list_installs_installs_get")
            await operation.locator(".opblock-summary").click()
            await operation.locator("button.try-out__btn").click()
            await operation.locator("button.execute").click()
            body = operation.locator(".live-responses-table .response-col_description pre")
            await expect(body.first).to_contain_text("N4242", timeout=10_000)
            await expect(
                operation.locator(".live-responses-table tr.response td.response-col_status").first
            ).to_have_text("200")
            await page.locator(".live-responses-table").first.scroll_into_view_if_needed()
            await page.screenshot(path=str(SCREENSHOTS / f"broker-swagger-{backend}-{persist}.png"))

            # The token is in the browser's storage, and survives a reload, only when an
            # operator turned BROKER_DOCS_PERSIST_AUTHORIZATION on.
            stored = await page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
            assert (jwt in stored) is persist, f"localStorage: {stored[:200]}"
            await page.reload(wait_until="networkidle")
            await expect(page.locator("button.authorize").first).to_have_class(
                "btn authorize locked" if persist else "btn authorize unlocked"
            )
        finally:
            await browser.close()

    offsite = [url for url in seen if urlsplit(url).scheme in ("http", "https", "ws", "wss")
               and urlsplit(url).netloc != origin.netloc]  # fmt: skip
    assert not offsite, f"the page left the broker's origin: {offsite}"
    assert not errors, f"the page logged errors: {errors}"
    assert f"{server.url}/docs/static/swagger-ui-bundle.js" in seen
    assert api_calls == [(f"{server.url}/installs?limit=50", f"Bearer {jwt}")]
