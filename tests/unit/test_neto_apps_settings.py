"""BROKER_NETO_APPS: the add-ons one broker serves, validated at start-up with a sentence
that names the variable and the app, never a secret; the single-app settings are the app
`default`. And the pending installs sealed before apps existed still open."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.config import ConfigError, Settings
from service.errors import InvalidState
from service.neto.apps import DEFAULT_APP
from service.oauth import pending
from service.oauth.models import PendingInstall
from service.security.crypto import Context, KeyRing, generate_key

SECRET = "staging-secret-" + "s" * 30
KEYS = {"encryption_keys": f"k1:{generate_key()}", "jwt_hs256_keys": "k:" + "x" * 40}


def settings(apps: Any = None, **values: Any) -> Settings:
    if apps is not None and not isinstance(apps, str):
        apps = json.dumps(apps)
    return Settings(_env_file=None, **KEYS, neto_apps=apps, **values)  # type: ignore[call-arg]


def staging(**entry: Any) -> dict[str, Any]:
    return {"staging": {"client_id": "stg-id", "client_secret": SECRET, **entry}}


def test_the_single_app_settings_are_the_app_default():
    s = settings(neto_client_id="prod-id", neto_client_secret="p" * 30,
                 neto_oauth_url="https://neto.example/oauth/v2/")  # fmt: skip
    assert list(s.apps) == [DEFAULT_APP]
    assert s.apps[DEFAULT_APP].client_id == "prod-id"
    assert s.apps[DEFAULT_APP].oauth_url == "https://neto.example/oauth/v2"
    assert s.oauth_configured
    assert not settings().oauth_configured


def test_apps_are_declared_beside_the_default_one_with_its_oauth_url_as_theirs():
    s = settings(staging(), neto_client_id="prod-id", neto_client_secret="p" * 30,
                 neto_oauth_url="https://neto.example/oauth/v2")  # fmt: skip
    assert list(s.apps) == ["default", "staging"]
    assert s.apps["staging"].client_secret.get_secret_value() == SECRET
    assert s.apps["staging"].oauth_url == "https://neto.example/oauth/v2"
    own = settings(staging(oauth_url="https://other.example/oauth/v2/"))
    assert own.apps["staging"].oauth_url == "https://other.example/oauth/v2"
    assert list(own.apps) == ["staging"], "no default app without the single-app settings"


def test_apps_and_their_secrets_can_come_from_files(tmp_path):
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(SECRET + "\n")  # as a mounted Secret holds it
    apps_file = tmp_path / "apps.json"
    entry = {"client_id": "stg-id", "client_secret_file": str(secret_file)}
    apps_file.write_text(json.dumps({"staging": entry}))
    s = settings(str(apps_file))
    assert s.apps["staging"].client_secret.get_secret_value() == SECRET


@pytest.mark.parametrize(
    ("apps", "says"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "must be a JSON object"),
        ("/nonexistent/apps.json", "neither a JSON object nor a readable file"),
        (json.dumps(["staging"]), "must be a JSON object"),
        ('{"staging": {"client_id": "a", "client_secret": "b"}, "staging": {}}', "twice"),
        ({"Staging": {"client_id": "a", "client_secret": "b"}}, "lowercase slug"),
        ({"stag ing": {"client_id": "a", "client_secret": "b"}}, "lowercase slug"),
        ({"-staging": {"client_id": "a", "client_secret": "b"}}, "lowercase slug"),
        ({"s" * 33: {"client_id": "a", "client_secret": "b"}}, "lowercase slug"),
        ({"staging": "stg-id"}, "must be an object"),
        (staging(clientid="x"), "unknown keys ['clientid']"),
        ({"staging": {"client_secret": SECRET}}, "client_id must be"),
        (staging(client_id="has space"), "client_id must be"),
        ({"staging": {"client_id": "a"}}, "exactly one of client_secret, client_secret_file"),
        (staging(client_secret_file="/x"), "exactly one of"),
        (staging(client_secret=""), "non-empty"),
        (staging(client_secret=None), "non-empty"),
        ({"staging": {"client_id": "a", "client_secret_file": "/nonexistent/s"}}, "cannot be read"),
        (staging(oauth_url="ftp://neto.example"), "absolute http(s) URL"),
        (staging(oauth_url="neto.example/oauth"), "absolute http(s) URL"),
        ({"a": {"client_id": "same", "client_secret": "x"},
          "b": {"client_id": "same", "client_secret": "y"}}, "same client_id"),
    ],
)  # fmt: skip
def test_a_mistake_is_a_sentence_naming_the_variable_and_no_secret(apps, says):
    with pytest.raises(ConfigError) as caught:
        settings(apps)
    message = str(caught.value)
    assert message.startswith("BROKER_NETO_APPS "), message
    assert says in message, message
    assert SECRET not in message


def test_the_default_app_is_declared_in_one_place_only():
    twice = {"default": {"client_id": "other", "client_secret": "x"}}
    with pytest.raises(ConfigError, match="declares the app 'default'"):
        settings(twice, neto_client_id="prod-id", neto_client_secret="p" * 30)
    assert list(settings(twice).apps) == ["default"], "alone, BROKER_NETO_APPS may declare it"
    with pytest.raises(ConfigError, match="client id of BROKER_NETO_CLIENT_ID"):
        settings(staging(client_id="prod-id"), neto_client_id="prod-id",
                 neto_client_secret="p" * 30)  # fmt: skip


def test_the_apps_setting_shows_no_secret():
    s = settings(staging())
    assert SECRET not in repr(s) and SECRET not in repr(s.apps)
    assert SECRET not in str(s.model_dump())


def test_the_environment_variable_is_read(monkeypatch):
    monkeypatch.setenv("BROKER_NETO_APPS", json.dumps(staging()))
    s = Settings(_env_file=None, **KEYS)  # type: ignore[call-arg]
    assert list(s.apps) == ["staging"]


def test_a_pending_install_sealed_before_apps_existed_still_opens():
    keyring = KeyRing.parse(KEYS["encryption_keys"])
    row = PendingInstall(state_hash="h" * 64, store_domain="shop.example.com",
                         return_url=None, initiated_by="svc", expires_at=None)  # type: ignore[arg-type]  # fmt: skip
    # As the previous version sealed it: no app in the associated data.
    old = Context("pending_installs", "app_state_sealed", row.state_hash,
                  ("", row.store_domain, row.initiated_by))  # fmt: skip
    row.app_state_sealed = keyring.seal(b"from-before", old)
    assert row.app == DEFAULT_APP
    assert pending.open_binding(keyring, row) == "from-before"
    row.app = "staging"  # the same row claimed for another app does not open
    with pytest.raises(InvalidState):
        pending.open_binding(keyring, row)
