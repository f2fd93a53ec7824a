"""Site-local IPv6 (fec0::/10) is inside a network, though Python's `ipaddress` calls it
global: the egress check refuses it, address by address and in the socket factory that
every outbound connection (Neto's API, webhook receivers) goes through."""

from __future__ import annotations

import socket

import pytest

from service.security.egress import EgressRefused, is_public_address, socket_factory

SITE_LOCAL = ["fec0::1", "fec0::a00:1", "fed0:1234::1", "feff:ffff:ffff:ffff::1", "fec0::1%eth0"]
# Its neighbours are unchanged: link-local below it (refused already), public far from it.
NEIGHBOURS = {"fe80::1": False, "febf:ffff::1": False, "2606:4700:4700::1111": True}


@pytest.mark.parametrize("address", SITE_LOCAL)
def test_site_local_ipv6_is_not_public(address):
    assert not is_public_address(address), f"{address} is site-local and must be refused"


@pytest.mark.parametrize("address", SITE_LOCAL[:2])
def test_the_socket_factory_refuses_site_local_ipv6(address):
    factory = socket_factory(allow_private=False)
    info = (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, 443, 0, 0))
    with pytest.raises(EgressRefused, match="non-public address"):
        factory(info)


@pytest.mark.parametrize(("address", "public"), NEIGHBOURS.items())
def test_the_neighbours_of_site_local_keep_their_verdict(address, public):
    assert is_public_address(address) is public
