"""The caller-token verifier, called directly: every refusal is its own case.

Tokens are built here byte by byte (HMAC by hand) or with PyJWT, a different JOSE library
from the broker's python-jose, so the verifier is tested against tokens it did not make.
The verifier's clock is injected, so time windows are exact and nothing sleeps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization

from service.config import Settings
from service.errors import ActionNotAllowed, Forbidden, StoreNotAllowed, Unauthorized
from service.security.callers import Caller, KeyFileError, TokenVerifier, mint
from service.security.crypto import generate_key
from tests.support import AUDIENCE, HS_KID, HS_SECRET, b64, hs256

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "orders-service",
        "aud": AUDIENCE,
        "iat": int(NOW),
        "exp": int(NOW) + 600,
        "scope": "credentials:read",
        "stores": ["N1001"],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.fixture
def make_verifier(jwks_file: Path):
    def build(clock: Clock | None = None, **overrides: Any) -> TokenVerifier:
        values: dict[str, Any] = {
            "env": "production",
            "encryption_keys": f"k1:{generate_key()}",
            "jwt_audience": AUDIENCE,
            "jwt_hs256_keys": f"{HS_KID}:{HS_SECRET}",
            "jwt_public_keys_file": jwks_file,
        }
        values.update(overrides)
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        return TokenVerifier(settings, clock=clock or Clock())

    return build


@pytest.fixture
def verifier(make_verifier) -> TokenVerifier:
    return make_verifier()


# What `claims()` grants, as `grants` reads it back.
DEFAULT_GRANTS = ("orders-service", {"credentials:read"}, {"N1001"}, None)


def grants(caller: Caller) -> tuple[Any, ...]:
    """Everything a verified token grants, compared whole: a caller is always truthy, so
    `assert verifier.verify(token)` could only fail by raising."""
    return caller.sub, caller.scopes, caller.stores, caller.actions


def refused(verifier: TokenVerifier, token: str, reason: str) -> None:
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(token)
    assert reason in caught.value.detail, caught.value.detail
    assert token not in caught.value.detail


def test_a_valid_hs256_token_names_its_caller(verifier):
    caller = verifier.verify(hs256(claims(actions=["UpdateItem"])))
    assert caller.sub == "orders-service"
    assert caller.scopes == {"credentials:read"}
    assert caller.stores == {"N1001"}
    assert caller.actions == ("UpdateItem",)


# -- refused before any cryptography ------------------------------------------------------


def test_token_over_8_kib_refused(verifier):
    token = hs256(claims(pad="x" * 8200))
    refused(verifier, token, "larger than 8 KiB")


def test_token_just_under_8_kib_accepted(verifier):
    base = hs256(claims(pad=""))
    token = hs256(claims(pad="x" * ((8192 - len(base)) * 3 // 4 - 4)))  # base64 grows 4/3
    assert 8100 < len(token) <= 8192
    assert grants(verifier.verify(token)) == DEFAULT_GRANTS


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("abc", id="one-segment"),
        pytest.param("abc.def", id="two-segments"),
        pytest.param("a.b.c.d", id="four-segments"),
        pytest.param(
            b64(b'{"alg":"RSA-OAEP","enc":"A256GCM","kid":"rsa1"}') + ".key.iv.ciphertext.tag",
            id="five-segment-jwe",
        ),
        pytest.param(hs256(claims()).rsplit(".", 1)[0] + ".", id="empty-signature"),
    ],
)
def test_token_not_three_segments_refused(verifier, token):
    refused(verifier, token, "three segments")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_refused(verifier, alg):
    head = b64(json.dumps({"alg": alg, "kid": HS_KID}).encode())
    token = head + "." + b64(json.dumps(claims()).encode()) + ".c2ln"
    refused(verifier, token, "Unsigned")


def test_unknown_kid_refused(verifier):
    refused(verifier, hs256(claims(), kid="hs-other"), "key id is unknown")


def test_missing_kid_refused(verifier):
    refused(verifier, hs256(claims(), kid=None), "key id is unknown")


def test_non_string_kid_refused(verifier):
    refused(verifier, hs256(claims(), kid=["hs1"]), "key id is unknown")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jku", "https://attacker.example/jwks.json"),
        ("x5u", "https://attacker.example/cert.pem"),
        ("jwk", {"kty": "oct", "k": b64(b"attacker")}),
        ("crit", ["exp"]),
        ("x5c", ["MIIB"]),
        ("enc", "A256GCM"),
    ],
)
def test_key_fetching_and_critical_headers_refused(verifier, name, value):
    # Correctly MAC'd with the configured key: only the header itself is the problem.
    refused(verifier, hs256(claims(), **{name: value}), "are refused")


def test_header_that_is_not_json_refused(verifier):
    refused(verifier, "bm90LWpzb24." + b64(b"{}") + ".c2ln", "not valid JSON")


def test_deeply_nested_header_refused_not_crashed(verifier):
    token = b64(b"[" * 5000) + "." + b64(b"{}") + ".c2ln"
    refused(verifier, token, "not valid JSON")


def test_header_that_is_not_an_object_refused(verifier):
    refused(verifier, b64(b'"HS256"') + "." + b64(b"{}") + ".c2ln", "not a JSON object")


# -- signatures and keys -----------------------------------------------------------------


def test_bad_signature_refused(verifier):
    refused(verifier, hs256(claims(), key=b"another-secret-" + b"x" * 32), "signature")


def test_payload_changed_after_signing_refused(verifier):
    head, _, sig = hs256(claims()).split(".")
    forged = b64(json.dumps(claims(scope="installs:admin")).encode())
    refused(verifier, f"{head}.{forged}.{sig}", "signature")


def rsa_public(rsa_key: Any, encoding: serialization.Encoding) -> bytes:
    return rsa_key.public_key().public_bytes(
        encoding, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("encoding", [serialization.Encoding.PEM, serialization.Encoding.DER])
@pytest.mark.parametrize("kid", ["rsa1", HS_KID])
def test_hs256_macd_with_the_rsa_public_key_refused(verifier, rsa_key, encoding, kid):
    """The algorithm-confusion attack: the public key used as an HMAC secret."""
    token = hs256(claims(), key=rsa_public(rsa_key, encoding), kid=kid)
    reason = "algorithm does not match" if kid == "rsa1" else "signature"
    refused(verifier, token, reason)


def test_rs256_token_minted_by_pyjwt_verifies(verifier, rsa_key):
    token = pyjwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa1"})
    assert grants(verifier.verify(token)) == DEFAULT_GRANTS


def test_es256_token_minted_by_pyjwt_verifies(verifier, ec_key):
    token = pyjwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec1"})
    assert grants(verifier.verify(token)) == DEFAULT_GRANTS


def test_rs256_token_naming_the_ec_key_refused(verifier, rsa_key):
    token = pyjwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "ec1"})
    refused(verifier, token, "algorithm does not match")


def test_es256_token_naming_the_rsa_key_refused(verifier, ec_key):
    token = pyjwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "rsa1"})
    refused(verifier, token, "algorithm does not match")


def test_rs256_token_naming_the_hs256_key_refused(verifier, rsa_key):
    token = pyjwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": HS_KID})
    refused(verifier, token, "algorithm does not match")


def test_rs256_token_signed_by_another_rsa_key_refused(verifier):
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = pyjwt.encode(claims(), other, algorithm="RS256", headers={"kid": "rsa1"})
    refused(verifier, token, "signature")


# -- time ------------------------------------------------------------------------------------


def test_expired_beyond_leeway_refused(verifier):
    refused(verifier, hs256(claims(iat=int(NOW) - 600, exp=int(NOW) - 31)), "expired")


def test_expired_within_leeway_accepted(verifier):
    caller = verifier.verify(hs256(claims(iat=int(NOW) - 600, exp=int(NOW) - 29)))
    assert caller.sub == "orders-service"


def test_iat_in_the_future_beyond_leeway_refused(verifier):
    refused(verifier, hs256(claims(iat=int(NOW) + 31, exp=int(NOW) + 600)), "in the future")


def test_iat_in_the_future_within_leeway_accepted(verifier):
    token = hs256(claims(iat=int(NOW) + 29, exp=int(NOW) + 600))
    assert grants(verifier.verify(token)) == DEFAULT_GRANTS


@pytest.mark.parametrize(
    "times",
    [
        {"iat": int(NOW) - 600, "exp": int(NOW) - 30},  # expired exactly the leeway ago
        {"iat": int(NOW) + 30, "exp": int(NOW) + 600},  # issued exactly the leeway ahead
        {"nbf": int(NOW) + 30},  # valid from exactly the leeway ahead
        {"nbf": int(NOW)},  # valid from now
        {"nbf": int(NOW) - 60},  # valid since a minute ago
    ],
    ids=["exp-at-leeway", "iat-at-leeway", "nbf-at-leeway", "nbf-now", "nbf-past"],
)
def test_time_claims_at_the_edge_of_the_leeway_are_accepted(verifier, times):
    assert grants(verifier.verify(hs256(claims(**times)))) == DEFAULT_GRANTS


def test_a_token_of_exactly_8_kib_is_accepted(verifier):
    base = hs256(claims(pad=""))
    pad = (8192 - len(base)) * 3 // 4
    token = next(t for n in range(pad - 4, pad + 4) if len(t := hs256(claims(pad="x" * n))) == 8192)
    assert grants(verifier.verify(token)) == DEFAULT_GRANTS


def test_mint_makes_a_token_the_verifier_takes_with_every_grant(make_verifier):
    verifier = make_verifier(Clock(time.time()), jwt_issuers="https://ops.example")
    token = mint(
        kid=HS_KID, secret=HS_SECRET, sub="ops", scope="credentials:read invoke",
        audience=AUDIENCE, ttl_seconds=600, stores=["N1"], actions=["GetItem", "Update*"],
        issuer="https://ops.example",
    )  # fmt: skip
    caller = verifier.verify(token)
    assert caller.sub == "ops"
    caller.require_store("N1")
    caller.require_action("UpdateItem", is_write=True)
    with pytest.raises(ActionNotAllowed):
        caller.require_action("GetOrder", is_write=False)
    bare = mint(kid=HS_KID, secret=HS_SECRET, sub="ops", scope="", audience=AUDIENCE,
                ttl_seconds=600)  # fmt: skip
    with pytest.raises(Unauthorized, match="iss"):
        verifier.verify(bare)
    with pytest.raises(StoreNotAllowed):
        make_verifier(Clock(time.time())).verify(bare).require_store("N1")


def test_nbf_in_the_future_refused(verifier):
    refused(verifier, hs256(claims(nbf=int(NOW) + 120)), "not valid yet")


def test_lifetime_over_24_hours_refused(verifier):
    refused(verifier, hs256(claims(exp=int(NOW) + 24 * 3600 + 1)), "longer than 24 hours")


def test_lifetime_of_exactly_24_hours_accepted(verifier):
    assert grants(verifier.verify(hs256(claims(exp=int(NOW) + 24 * 3600)))) == DEFAULT_GRANTS


def test_cache_never_serves_a_token_past_its_exp(make_verifier):
    clock = Clock()
    verifier = make_verifier(clock)
    token = hs256(claims(exp=int(NOW) + 2))
    assert grants(verifier.verify(token)) == DEFAULT_GRANTS
    assert token in verifier._cache  # the second call below is a cache hit
    clock.now = NOW + 1
    assert grants(verifier.verify(token)) == DEFAULT_GRANTS
    clock.now = NOW + 2 + 31  # past exp and past the leeway
    refused(verifier, token, "expired")
    assert token not in verifier._cache


def test_cache_hands_a_token_past_exp_back_to_full_verification(make_verifier):
    clock = Clock()
    verifier = make_verifier(clock)
    token = hs256(claims(exp=int(NOW) + 2))
    verifier.verify(token)
    clock.now = NOW + 10  # past exp, inside the leeway: accepted, but not from the cache
    assert grants(verifier.verify(token)) == DEFAULT_GRANTS
    assert token not in verifier._cache


# -- required claims and their types --------------------------------------------------------


@pytest.mark.parametrize("name", ["sub", "aud", "exp", "iat"])
def test_missing_required_claim_refused(verifier, name):
    refused(verifier, hs256(claims(**{name: ...})), f"required claim `{name}`")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sub", 42),
        ("sub", ""),
        ("sub", "x" * 257),
        ("exp", str(int(NOW) + 600)),
        ("exp", float("inf")),
        ("exp", None),
        ("iat", True),
        ("iat", [int(NOW)]),
        ("iat", float("-inf")),
        ("exp", 10**400),  # a valid JSON number that no float holds
        ("exp", -(10**400)),
        ("iat", 10**400),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_claim_of_the_wrong_type_refused(verifier, name, value):
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(hs256(claims(**{name: value})))
    assert f"`{name}`" in caught.value.detail or "Subject" in caught.value.detail


def test_wrong_audience_refused(verifier):
    refused(verifier, hs256(claims(aud="another-service")), "audience")


def test_audience_list_holding_ours_accepted(verifier):
    assert grants(verifier.verify(hs256(claims(aud=["other", AUDIENCE])))) == DEFAULT_GRANTS


def test_iss_not_checked_without_configured_issuers(verifier):
    assert grants(verifier.verify(hs256(claims(iss="https://anyone.example")))) == DEFAULT_GRANTS


def test_wrong_iss_refused_when_issuers_configured(make_verifier):
    verifier = make_verifier(jwt_issuers="https://idp.example,https://idp2.example")
    refused(verifier, hs256(claims(iss="https://evil.example")), "issuer")


def test_right_iss_accepted_when_issuers_configured(make_verifier):
    verifier = make_verifier(jwt_issuers="https://idp.example,https://idp2.example")
    assert grants(verifier.verify(hs256(claims(iss="https://idp2.example")))) == DEFAULT_GRANTS


def test_absent_iss_refused_when_issuers_configured(make_verifier):
    verifier = make_verifier(jwt_issuers="https://idp.example")
    refused(verifier, hs256(claims()), "issuer")


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("stores", "N1001", "`stores`"),
        ("stores", ["N1001", 7], "`stores`"),
        ("stores", [""], "`stores`"),
        ("stores", {"N1001": True}, "`stores`"),
        ("actions", "GetItem", "`actions`"),
        ("actions", [None], "`actions`"),
        ("actions", ["Get*Item"], "only at its end"),
        ("actions", ["*Item"], "only at its end"),
        ("actions", ["GetIte*m"], "only at its end"),
        ("scope", ["credentials:read"], "`scope`"),
        ("scope", 1, "`scope`"),
    ],
    ids=lambda v: repr(v)[:20],
)
def test_malformed_grant_claims_refused(verifier, name, value, reason):
    refused(verifier, hs256(claims(**{name: value})), reason)


# -- what a verified token grants ---------------------------------------------------------


def test_installs_admin_implies_installs_read_and_start_only(verifier):
    caller = verifier.verify(hs256(claims(scope="installs:admin")))
    for scope in ("installs:admin", "installs:read", "installs:start"):
        caller.require_scope(scope)
    for scope in ("credentials:read", "invoke"):
        with pytest.raises(Forbidden):
            caller.require_scope(scope)


def test_installs_read_does_not_imply_start_or_admin(verifier):
    caller = verifier.verify(hs256(claims(scope="installs:read")))
    for scope in ("installs:start", "installs:admin"):
        with pytest.raises(Forbidden):
            caller.require_scope(scope)


def test_absent_scope_grants_nothing(verifier):
    caller = verifier.verify(hs256(claims(scope=...)))
    assert caller.scopes == frozenset()


def test_unknown_scopes_grant_nothing(verifier):
    caller = verifier.verify(hs256(claims(scope="invoke admin * installs:admin\u00a0x")))
    # Only the known scope survives: an unknown word is neither kept (a later check for a
    # scope of that name must not find it) nor split further.
    assert caller.scopes == {"invoke"}


def test_stores_claim_limits_stores(verifier):
    caller = verifier.verify(hs256(claims(stores=["N1", "N2"])))
    caller.require_store("N2")
    with pytest.raises(StoreNotAllowed):
        caller.require_store("N3")


def test_star_store_allows_every_store(verifier):
    caller = verifier.verify(hs256(claims(stores=["*"])))
    assert grants(caller) == ("orders-service", {"credentials:read"}, {"*"}, None)
    for store_id in ("N-anything", "N1001", "*"):
        caller.require_store(store_id)


def test_absent_stores_claim_allows_no_store(verifier):
    caller = verifier.verify(hs256(claims(stores=...)))
    with pytest.raises(StoreNotAllowed):
        caller.require_store("N1001")


def test_reads_need_no_grant_and_writes_need_one(verifier):
    caller = verifier.verify(hs256(claims(actions=...)))
    caller.require_action("GetItem", is_write=False)
    with pytest.raises(ActionNotAllowed):
        caller.require_action("UpdateItem", is_write=True)


def test_a_present_actions_list_is_the_whole_allow_list_reads_included(verifier):
    caller = verifier.verify(hs256(claims(actions=["GetItem"])))
    caller.require_action("GetItem", is_write=False)
    for action in ("GetCustomer", "GetOrder"):
        with pytest.raises(ActionNotAllowed):
            caller.require_action(action, is_write=False)
    nothing = verifier.verify(hs256(claims(actions=[])))
    with pytest.raises(ActionNotAllowed):
        nothing.require_action("GetItem", is_write=False)


def test_action_grants_are_exact_names_or_prefixes(verifier):
    caller = verifier.verify(hs256(claims(actions=["Update*", "AddOrder"])))
    caller.require_action("UpdateItem", is_write=True)
    caller.require_action("AddOrder", is_write=True)
    for action in ("AddItem", "AddOrderX", "updateItem"):
        with pytest.raises(ActionNotAllowed):
            caller.require_action(action, is_write=True)


def test_a_prefix_grant_is_the_whole_text_before_its_star(verifier):
    caller = verifier.verify(hs256(claims(actions=["GetI*"])))
    caller.require_action("GetItem", is_write=False)
    with pytest.raises(ActionNotAllowed):
        caller.require_action("GetOrder", is_write=False)


def test_action_pattern_characters_are_not_wildcards(verifier):
    caller = verifier.verify(hs256(claims(actions=["Up?ate*", "[A]ddItem"])))
    for action in ("UpdateItem", "AddItem"):
        with pytest.raises(ActionNotAllowed):
            caller.require_action(action, is_write=True)


# -- key configuration --------------------------------------------------------------------


def test_short_hs256_secret_fails_start_up(make_verifier):
    with pytest.raises(KeyFileError, match="shorter than 32 bytes") as caught:
        make_verifier(jwt_hs256_keys="k:short-secret")
    assert "short-secret" not in str(caught.value)


def test_private_key_in_jwks_file_fails_start_up(make_verifier, tmp_path, rsa_key):
    from jose import jwk as jose_jwk

    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    entry = {**jose_jwk.construct(pem, "RS256").to_dict(), "kid": "leaked"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(KeyFileError, match="private key"):
        make_verifier(jwt_public_keys_file=path)


def test_a_huge_nbf_is_refused_not_a_crash(verifier):
    refused(verifier, hs256(claims(nbf=10**400)), "`nbf`")


@pytest.mark.parametrize("bits", [1024, 2047])
def test_a_short_rsa_key_in_the_jwks_file_fails_start_up_naming_its_kid(
    make_verifier, tmp_path, bits
):
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jose import jwk as jose_jwk

    weak = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = weak.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    entry = {**jose_jwk.construct(pem, "RS256").to_dict(), "kid": "legacy-idp-2014"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(KeyFileError, match=f"'legacy-idp-2014'.*{bits} bits.*2048"):
        make_verifier(jwt_public_keys_file=path)


def test_a_jwks_rsa_key_that_does_not_parse_fails_start_up_naming_its_kid(make_verifier, tmp_path):
    entry = {"kty": "RSA", "kid": "broken", "n": "A" * 400, "e": "!!"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(KeyFileError, match="'broken'"):
        make_verifier(jwt_public_keys_file=path)
