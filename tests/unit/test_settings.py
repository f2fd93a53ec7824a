"""Settings: production refuses to start without keys; development generates its own."""

import json

import pytest

from service.config import ConfigError, Settings, load_settings
from service.security.crypto import generate_key


def test_production_without_encryption_keys_names_the_variable(monkeypatch):
    monkeypatch.delenv("BROKER_ENCRYPTION_KEYS", raising=False)
    with pytest.raises(ConfigError, match="BROKER_ENCRYPTION_KEYS"):
        Settings(_env_file=None, jwt_hs256_keys="k:" + "s" * 40)


def test_production_without_any_jwt_key_source_names_both_variables():
    with pytest.raises(ConfigError, match="BROKER_JWT_HS256_KEYS or BROKER_JWT_PUBLIC_KEYS_FILE"):
        Settings(_env_file=None, encryption_keys=f"k1:{generate_key()}")


def test_production_is_the_default():
    s = Settings(_env_file=None, encryption_keys=f"k1:{generate_key()}", jwt_hs256_keys="k:x")
    assert s.env == "production"


def test_plain_database_urls_get_async_drivers():
    s = Settings(
        _env_file=None,
        env="development",
        database_url="postgresql://u@h/db",
    )
    assert s.database_url == "postgresql+asyncpg://u@h/db"
    s = Settings(_env_file=None, env="development", database_url="sqlite:///./x.db")
    assert s.database_url == "sqlite+aiosqlite:///./x.db"


def test_development_generates_throwaway_keys_once_and_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    for name in ("BROKER_ENCRYPTION_KEYS", "BROKER_JWT_HS256_KEYS", "BROKER_JWT_PUBLIC_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER_ENV", "development")
    first = load_settings()
    assert "throw-away keys" in caplog.text
    keys_file = tmp_path / "var" / "dev-keys.json"
    assert keys_file.stat().st_mode & 0o077 == 0, "dev keys must be readable by the owner only"
    second = load_settings()
    assert first.encryption_keys.get_secret_value() == second.encryption_keys.get_secret_value()
    assert json.loads(keys_file.read_text())["encryption_keys"].startswith("dev1:")


def test_secrets_do_not_show_in_repr():
    key = generate_key()
    s = Settings(_env_file=None, encryption_keys=f"k1:{key}", jwt_hs256_keys="k:" + "q" * 40,
                 neto_client_secret="client-secret-value")  # fmt: skip
    text = repr(s)
    assert key not in text and "client-secret-value" not in text and "q" * 40 not in text
