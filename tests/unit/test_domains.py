"""Store domain rules: what enters the broker as a domain."""

import pytest

from service.errors import BrokerError
from service.security.domains import normalize_store_domain

LONGEST = ("a" * 62 + ".") * 3 + "b" * 60 + ".com"
assert len(LONGEST) == 253


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("shop.example.com", "shop.example.com"),
        ("Shop.Example.COM", "shop.example.com"),
        ("shop.example.com.", "shop.example.com"),
        ("  www.mystore.com.au ", "www.mystore.com.au"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("my-shop.neto.com.au", "my-shop.neto.com.au"),
        ("shop.example.BOX.", "shop.example.box"),  # only the dot goes
        ("shop.example.com" + " " * 996, "shop.example.com"),  # 1012 characters: the bound
        (LONGEST, LONGEST),  # 253 characters
    ],
)
def test_valid_domains_are_normalised(raw, expected):
    assert normalize_store_domain(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "localhost",
        "shop.localhost",
        "printer.local",
        "db.internal",
        "example",  # one label
        "127.0.0.1",
        "10.0.0.1",
        "2130706433",  # decimal IPv4
        "0x7f.1",  # hex IPv4
        "0x7f.0x1",  # hex IPv4, every label hex
        "0177.0.0.1",  # octal IPv4
        "[::1]",
        "::1",
        "shop.example.com:8443",
        "user@shop.example.com",
        "shop.example.com/path",
        "shop.example.com\\evil",
        "shop%2eexample.com",
        "shop.example.com#frag",
        "shop.example.com?x=1",
        "https://shop.example.com",
        "-shop.example.com",
        "shop-.example.com",
        "shop..example.com",
        "shop.example.com..",
        LONGEST + "a",  # 254 characters
        "shop.example.com" + " " * 997,  # over 1012 characters before anything else
        "a" * 64 + ".example.com",
        ("a" * 60 + ".") * 5 + "com",  # over 253
        "shop.example.123",
        "shop\r\n.example.com",
        "shop\x00.example.com",
        "shop example.com",
    ],
)
def test_hostile_domains_are_refused_with_a_stable_code(raw):
    with pytest.raises(BrokerError) as info:
        normalize_store_domain(raw)
    assert info.value.code == "invalid_store_domain"
    assert info.value.status == 400


def test_unicode_lookalike_is_not_the_ascii_domain():
    # A Cyrillic "a" (U+0430) in "example": a different host, never the real store.
    lookalike = "shop.ex\u0430mple.com"
    assert normalize_store_domain(lookalike) != "shop.example.com"
    assert normalize_store_domain(lookalike).startswith("shop.xn--")
