"""Sealing: AES-256-GCM with a key id and row-bound associated data."""

import base64

import pytest

from service.security.crypto import (
    Context,
    KeyConfigError,
    KeyRing,
    SealError,
    generate_key,
    key_id_of,
)


def ring(spec: str) -> KeyRing:
    return KeyRing.parse(spec)


def test_a_generated_key_is_32_random_bytes_in_unpadded_base64url():
    key = generate_key()
    assert len(key) == 43 and "=" not in key, key
    assert base64.urlsafe_b64decode(key + "=") != base64.urlsafe_b64decode(generate_key() + "=")
    assert len(base64.urlsafe_b64decode(key + "=")) == 32


def test_round_trip_and_key_id_visible():
    keys = ring(f"k1:{generate_key()}")
    ctx = Context("installs", "secret_sealed", "N1")
    sealed = keys.seal(b"tok_secret", ctx)
    assert sealed.startswith("v1:k1:")
    assert b"tok_secret" not in sealed.encode()
    assert keys.open(sealed, ctx) == b"tok_secret"


def test_same_plaintext_seals_differently_each_time():
    keys = ring(f"k1:{generate_key()}")
    ctx = Context("installs", "secret_sealed", "N1")
    assert keys.seal(b"x", ctx) != keys.seal(b"x", ctx)


@pytest.mark.parametrize(
    "other",
    [
        Context("installs", "secret_sealed", "N2"),  # another store's row
        Context("installs", "user_sealed", "N1"),  # another column
        Context("pending_installs", "secret_sealed", "N1"),  # another table
    ],
)
def test_ciphertext_moved_elsewhere_fails_to_open(other):
    keys = ring(f"k1:{generate_key()}")
    sealed = keys.seal(b"tok", Context("installs", "secret_sealed", "N1"))
    with pytest.raises(SealError, match="copied from another row"):
        keys.open(sealed, other)


def test_tampered_ciphertext_fails():
    keys = ring(f"k1:{generate_key()}")
    ctx = Context("installs", "secret_sealed", "N1")
    sealed = keys.seal(b"tok", ctx)
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(SealError):
        keys.open(flipped, ctx)


def test_first_key_seals_all_keys_open():
    old, new = generate_key(), generate_key()
    ctx = Context("installs", "secret_sealed", "N1")
    sealed_old = ring(f"old:{old}").seal(b"tok", ctx)
    both = ring(f"new:{new},old:{old}")
    assert both.open(sealed_old, ctx) == b"tok"
    assert both.seal(b"tok", ctx).startswith("v1:new:")


def test_unknown_key_id_is_named_without_key_material():
    sealed = ring(f"gone:{generate_key()}").seal(b"t", Context("installs", "c", "1"))
    with pytest.raises(SealError, match="'gone', which is not configured"):
        ring(f"k1:{generate_key()}").open(sealed, Context("installs", "c", "1"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "at least one"),
        ("nokey", "kid:key"),
        ("bad kid:" + generate_key(), "kid:key"),
        ("k1:c2hvcnQ", "32 bytes"),
        ("k1:!!!notbase64", "base64|32 bytes"),
        (f"k1:{generate_key()},k1:{generate_key()}", "twice"),
    ],
)
def test_bad_key_config_is_refused(spec, message):
    with pytest.raises(KeyConfigError, match=message):
        ring(spec)


def test_repr_shows_no_key_material():
    key = generate_key()
    assert key not in repr(ring(f"k1:{key}"))


@pytest.mark.parametrize("value", ["v2:k1:AAAA", "k1:AAAA", "v1k1AAAA", ""])
def test_the_key_id_of_a_value_of_another_format_is_refused(value):
    with pytest.raises(SealError, match="not a sealed value of a known format"):
        key_id_of(value)


def test_the_key_id_is_read_from_a_sealed_value():
    sealed = ring(f"k7:{generate_key()}").seal(b"x", Context("installs", "secret_sealed", "N1"))
    assert key_id_of(sealed) == "k7"


# Sealed by this code's first release with the key below: rows written then must open with
# every later release, so the associated data's format (its prefix, its separators) can
# never change without a migration.
KNOWN_KEY = "k1:" + "B" * 43
KNOWN = {
    (): "v1:k1:EWJxxQgvAnapF01B3Vef5P3thfuKyoz2TRKRIXVDqQ1PDJcuDzGqK5rgTg",
    ("shop.example.com", "oauth"): (
        "v1:k1:Zq2ub40W4ZKRMrBmgGWZsR7dJ9JFBYLSAzqy4CXTR8y_YhDU4KKaudns_Q"
    ),
}


@pytest.mark.parametrize("bound", list(KNOWN), ids=["place", "place-and-row-values"])
def test_values_sealed_by_an_earlier_release_still_open(bound):
    ctx = Context("installs", "secret_sealed", "N1", bound=bound)
    assert ring(KNOWN_KEY).open(KNOWN[bound], ctx) == b"known plaintext"


def test_sealed_values_are_unpadded_base64url_and_every_one_opens():
    """The stored form carries no `=` padding; whatever the last character of the
    encoding, the value opens. 8-byte plaintexts seal to 36 bytes, whose encoding ends in
    any of the 64 characters (500 values see each of them with near certainty); 9 and 10
    bytes seal to lengths that base64 pads."""
    keys = ring(f"k1:{generate_key()}")
    ctx = Context("installs", "secret_sealed", "N1")
    for n in range(500):
        for plaintext in (f"s{n:07d}".encode(), f"s{n:08d}".encode(), f"s{n:09d}".encode()):
            sealed = keys.seal(plaintext, ctx)
            encoded = sealed.split(":", 2)[2]
            assert "=" not in encoded and encoded.strip() == encoded, sealed
            assert keys.open(sealed, ctx) == plaintext
