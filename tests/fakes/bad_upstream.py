"""A raw-socket stand-in for a store's Neto API that misbehaves in the ways an HTTP
framework cannot: it resets the connection mid-body (RST, via SO_LINGER 0), answers with
bytes that are not HTTP, sends a chunked body that never ends, accepts and never answers,
or closes right after the headers.

It serves `POST /{store_domain}/do/WS/NetoAPI` like the fake Neto (point
BROKER_NETO_API_URL_TEMPLATE at `url + "/{store_domain}/do/WS/NetoAPI"`); what it does is
chosen per store domain in `behaviours` (default `ok`: a well-formed, keep-alive JSON
200), so healthy and broken stores share one server. It records every request it read
(`received`) and counts the connections still open, so tests can assert that writes were
sent once and that the broker let go of every connection.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

OK = "ok"
RESET_MID_BODY = "reset_mid_body"
GARBAGE = "garbage"
ENDLESS_CHUNKED = "endless_chunked"
NEVER_ANSWER = "never_answer"
CLOSE_AFTER_HEADERS = "close_after_headers"
BEHAVIOURS = (RESET_MID_BODY, GARBAGE, ENDLESS_CHUNKED, NEVER_ANSWER, CLOSE_AFTER_HEADERS)

OK_BODY = b'{"Item":[],"Ack":"Success"}'
GARBAGE_BYTES = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfcSSH-2.0-not-http\r\n\xff\xfe\x00\r\n\r\n"
CHUNK = b"4000\r\n" + b" " * 0x4000 + b"\r\n"


@dataclass
class Received:
    domain: str
    headers: dict[str, str]  # names lower-cased
    head: bytes  # the request line and headers exactly as they arrived
    body: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def action(self) -> str | None:
        return self.headers.get("netoapi_action")


class BadUpstream:
    def __init__(self) -> None:
        self.behaviours: dict[str, str] = {}
        self.received: list[Received] = []
        self.open_connections: dict[str, int] = {}  # domain -> connections open now
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    # -- what tests call -------------------------------------------------------------
    def start(self) -> BadUpstream:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = future.result(timeout=5)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def reset(self) -> None:
        with self._lock:
            self.behaviours.clear()
            self.received.clear()

    def received_for(self, domain: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.domain == domain]

    def open_for(self, domain: str) -> int:
        with self._lock:
            return self.open_connections.get(domain, 0)

    async def wait_closed(self, domain: str, timeout: float = 2.0) -> int:
        """The connections still open for `domain` once they close or `timeout` passes
        (a close takes a moment to reach this server's thread)."""
        deadline = time.monotonic() + timeout
        while self.open_for(domain) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.open_for(domain)

    # -- the server ------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        domain = ""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1] if " " in lines[0] else "/"
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                # A pooled connection may carry requests for several stores: it counts as
                # open for the store of its latest request.
                latest = target.split("/")[1] if target.count("/") > 1 else ""
                if latest != domain:
                    if domain:
                        self._count(domain, -1)
                    domain = latest
                    self._count(domain, +1)
                with self._lock:
                    self.received.append(Received(domain, headers, head, body))
                    behaviour = self.behaviours.get(domain, OK)
                if not await getattr(self, "_" + behaviour)(reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if domain:
                self._count(domain, -1)
            if not writer.transport.is_closing():
                writer.close()

    def _count(self, domain: str, delta: int) -> None:
        with self._lock:
            self.open_connections[domain] = self.open_connections.get(domain, 0) + delta

    # Each behaviour returns True to keep the connection for another request.
    async def _ok(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
        )
        await writer.drain()
        return True

    async def _reset_mid_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"Item\":[")  # fmt: skip
        await writer.drain()
        await asyncio.sleep(0.01)  # let the headers and the first bytes arrive first
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # closes with linger 0: the peer gets a RST
        return False

    async def _garbage(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(GARBAGE_BYTES)
        await writer.drain()
        await asyncio.sleep(0.01)
        return False

    async def _endless_chunked(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
        while not writer.transport.is_closing():  # until the client hangs up
            writer.write(CHUNK)
            await writer.drain()
        return False

    async def _never_answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        await reader.read()  # holds the connection until the client closes it
        return False

    async def _close_after_headers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n")  # fmt: skip
        await writer.drain()
        writer.close()  # a clean FIN where the body should be
        return False
