"""A host with several addresses (stock Debian's `localhost` is 127.0.0.1 and ::1): aiohttp
folds the refusals of all of them into one plain OSError, and it must still read as an
egress refusal, in the webhook delivery log and on the Neto path alike."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from service.neto.upstream import egress_refused
from service.security.egress import EgressRefused, is_refusal, socket_factory


class Resolves(AbstractResolver):
    """Answers every name with the given addresses, as /etc/hosts would."""

    def __init__(self, *addresses: str) -> None:
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                proto=0,
                flags=socket.AI_NUMERICHOST,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
            )
            for address in self._addresses
        ]

    async def close(self) -> None:
        return None


async def connect_error(*addresses: str) -> aiohttp.ClientConnectorError:
    connector = aiohttp.TCPConnector(
        resolver=Resolves(*addresses), socket_factory=socket_factory(allow_private=False)
    )
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get("http://receiver.internal:9/")
    return caught.value


async def test_refusing_every_address_of_a_host_is_an_egress_refusal() -> None:
    error = await connect_error("127.0.0.1", "::1")
    # What aiohttp really raises: the two refusals as text, not an EgressRefused.
    assert not isinstance(error.os_error, EgressRefused)
    assert "Multiple exceptions: " in str(error.os_error)
    assert is_refusal(error.os_error)
    assert egress_refused(error)


async def test_refusing_the_one_address_of_a_host_is_an_egress_refusal() -> None:
    error = await connect_error("::1")
    assert isinstance(error.os_error, EgressRefused) and is_refusal(error.os_error)


@pytest.mark.parametrize(
    "error",
    [
        OSError(
            "Multiple exceptions: refusing to connect to non-public address ::1, "
            "[Errno 111] Connect call failed ('203.0.113.9', 443)"
        ),
        OSError(111, "Multiple exceptions: [Errno 111] a, [Errno 111] b"),
        ConnectionRefusedError(111, "Connect call failed"),
        RuntimeError("Multiple exceptions: refusing to connect to non-public address ::1"),
    ],
    ids=["one-refused-one-failed", "all-failed", "refused-by-peer", "not-an-os-error"],
)
def test_anything_else_is_a_connection_failure(error: Any) -> None:
    assert not is_refusal(error)
