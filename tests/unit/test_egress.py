"""The egress rules: which addresses the broker may connect to, in every spelling, and the
socket factory that applies them to each resolved address right before connecting."""

from __future__ import annotations

import socket

import pytest

from service.security.egress import EgressRefused, is_public_address, socket_factory

# Every one of these is a way to reach a host inside the network (or nowhere routable).
REFUSED = {
    "IPv4 loopback": "127.0.0.1",
    "IPv4 loopback, not .1": "127.9.8.7",
    "IPv6 loopback": "::1",
    "unspecified v4": "0.0.0.0",  # noqa: S104 (an address under test, not a bind)
    "unspecified v6": "::",
    "private 10/8": "10.1.2.3",
    "private 172.16/12": "172.16.5.4",
    "private 192.168/16": "192.168.1.1",
    "cloud metadata": "169.254.169.254",
    "link-local v4": "169.254.0.1",
    "link-local v6": "fe80::1",
    "link-local v6 with a zone": "fe80::1%eth0",
    "unique local v6": "fd00::1",
    "CGNAT": "100.64.0.1",
    "CGNAT, top": "100.127.255.254",
    "TEST-NET-1": "192.0.2.1",
    "benchmarking": "198.18.0.1",
    "multicast v4": "224.0.0.1",
    "multicast v6, global scope": "ff0e::1",
    "reserved 240/4": "240.0.0.1",
    "broadcast": "255.255.255.255",
    "IPv4-mapped loopback": "::ffff:127.0.0.1",
    "IPv4-mapped metadata": "::ffff:169.254.169.254",
    "IPv4-mapped private": "::ffff:10.0.0.1",
    "IPv4-mapped CGNAT": "::ffff:100.64.0.1",
    "NAT64 loopback": "64:ff9b::7f00:1",
    "NAT64 metadata": "64:ff9b::a9fe:a9fe",
    "NAT64 private": "64:ff9b::a00:1",
    "local-use NAT64 private": "64:ff9b:1::a00:1",
    "6to4 loopback": "2002:7f00:1::",
    "6to4 metadata": "2002:a9fe:a9fe::1",
    "6to4 private": "2002:c0a8:101::1",
    "6to4 CGNAT": "2002:6440:1::1",
    # Teredo: the client address is stored inverted in the last 32 bits.
    "Teredo to loopback": "2001:0:4136:e378:8000:63bf:80ff:fffe",
    "Teredo to metadata": "2001:0:4136:e378:8000:63bf:5601:5601",
    "documentation v6": "2001:db8::1",
    "not an address": "shop.example.com",
    "empty": "",
}

ALLOWED = {
    "public v4": "8.8.8.8",
    "public v4, another": "1.1.1.1",
    "public v4 beside CGNAT": "100.128.0.1",
    "public v6": "2606:4700:4700::1111",
    "public v6, another": "2a00:1450:4001:80b::200e",
    "public v6 with a zone": "2606:4700:4700::1111%eth0",
    "IPv4-mapped public": "::ffff:8.8.8.8",
    "NAT64 public": "64:ff9b::808:808",
    "6to4 public": "2002:808:808::1",
    "Teredo to a public client": "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
}


@pytest.mark.parametrize("address", REFUSED.values(), ids=REFUSED.keys())
def test_non_public_addresses_are_refused_in_every_spelling(address):
    assert not is_public_address(address), f"{address} must not be reachable"


@pytest.mark.parametrize("address", ALLOWED.values(), ids=ALLOWED.keys())
def test_public_addresses_are_allowed(address):
    assert is_public_address(address), f"{address} is public and must be allowed"


def addr_info(address: str, port: int = 443) -> tuple:
    """What aiohttp hands the socket factory for one resolved address."""
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))


SOCKET_REFUSED = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "169.254.169.254", "2002:a9fe:a9fe::1",
                  "64:ff9b::7f00:1", "fe80::1", "100.64.0.1"]  # fmt: skip


@pytest.mark.parametrize("address", SOCKET_REFUSED)
def test_the_socket_factory_refuses_a_non_public_address_of_either_family(address):
    factory = socket_factory(allow_private=False)
    with pytest.raises(EgressRefused, match="non-public address"):
        factory(addr_info(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111"])
def test_the_socket_factory_opens_a_tcp_socket_for_a_public_address(address):
    sock = socket_factory(allow_private=False)(addr_info(address))
    with sock:
        assert sock.family == (socket.AF_INET6 if ":" in address else socket.AF_INET)
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_private_egress_allowed_opens_loopback_sockets(address):
    sock = socket_factory(allow_private=True)(addr_info(address))
    with sock:
        assert sock.family == (socket.AF_INET6 if ":" in address else socket.AF_INET)
