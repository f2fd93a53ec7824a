"""`broker token mint`: what it prints is what the broker grants, and a scope the broker
would ignore is refused before a token exists."""

from __future__ import annotations

import pytest
from click.testing import Result
from typer.testing import CliRunner

from service.cli import app
from service.config import Settings
from service.errors import ActionNotAllowed
from service.security.callers import TokenVerifier
from tests.support import ENC_KEY, HS_KID, HS_SECRET

ENV = {
    "BROKER_ENV": "production",
    "BROKER_DATABASE_URL": "sqlite+aiosqlite:///:memory:",
    "BROKER_ENCRYPTION_KEYS": f"k1:{ENC_KEY}",
    "BROKER_JWT_HS256_KEYS": f"{HS_KID}:{HS_SECRET}",
}


def mint(*args: str) -> Result:
    return CliRunner().invoke(app, ["token", "mint", "--sub", "ops", *args], env=ENV)


def verifier() -> TokenVerifier:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        encryption_keys=ENV["BROKER_ENCRYPTION_KEYS"],
        jwt_hs256_keys=ENV["BROKER_JWT_HS256_KEYS"],
    )
    return TokenVerifier(settings)


def test_minted_actions_are_the_complete_allow_list():
    result = mint("--scope", "invoke credentials:read", "--stores", "N1", "--actions", "GetItem")
    assert result.exit_code == 0, result.output
    caller = verifier().verify(result.stdout.strip())
    assert caller.scopes == {"invoke", "credentials:read"}
    caller.require_action("GetItem", is_write=False)
    with pytest.raises(ActionNotAllowed):
        caller.require_action("GetCustomer", is_write=False)


@pytest.mark.parametrize(
    "scope", ["invoke\u00a0credentials:read", "invoke credentials:write", "invoke\tevents:read"]
)
def test_a_scope_the_broker_would_ignore_is_refused(scope):
    result = mint("--scope", scope)
    assert result.exit_code == 2, result.output
    assert "unknown scope" in result.output
    assert "eyJ" not in result.stdout, "no token may be printed"


def test_a_batch_token_is_minted_and_an_unknown_priority_is_refused():
    result = mint("--scope", "invoke", "--stores", "N1", "--priority", "batch")
    assert result.exit_code == 0, result.output
    assert verifier().verify(result.stdout.strip()).priority == "batch"
    default = mint("--scope", "invoke", "--stores", "N1")
    assert verifier().verify(default.stdout.strip()).priority == "interactive"
    refused = mint("--scope", "invoke", "--priority", "urgent")
    assert refused.exit_code == 2 and "eyJ" not in refused.stdout
