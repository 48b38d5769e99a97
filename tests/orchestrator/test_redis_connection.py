"""RedisSettings as pure values: where secrets may come from, and how URLs are shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.allocator.config import AllocatorConfig
from orchestrator.queue.config import QueueConfig
from orchestrator.redis_connection import (
    CA_ENV,
    CERT_ENV,
    KEY_ENV,
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    URL_ENV,
    RedisSettings,
    RedisSettingsError,
)

SECRET = "s3cret-Pa55"


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text("not parsed until a connection is made\n")
    return str(path)


@pytest.mark.parametrize(
    "url",
    [f"redis://vlmq:{SECRET}@127.0.0.1:6379/0", f"rediss://127.0.0.1:6379/0?password={SECRET}"],
)
def test_a_password_in_a_command_line_url_is_refused(url: str) -> None:
    with pytest.raises(RedisSettingsError, match="process listings") as refusal:
        RedisSettings.from_environment(url, environ={})
    assert SECRET not in str(refusal.value)


def test_a_password_in_the_url_from_the_environment_is_taken() -> None:
    url = f"redis://vlmq:{SECRET}@127.0.0.1:6379/0"
    settings = RedisSettings.from_environment(environ={URL_ENV: url})
    assert settings.connection_kwargs()["password"] == SECRET
    assert SECRET not in settings.connection_url


def test_the_password_comes_from_the_environment() -> None:
    settings = RedisSettings.from_environment(
        "redis://vlmq@127.0.0.1:6379/0", environ={PASSWORD_ENV: SECRET}
    )
    assert settings.password == SECRET


def test_a_password_file_wins_over_the_environment_and_loses_its_newline(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text(f"{SECRET}\n")
    from_flag = RedisSettings.from_environment(
        "redis://h:1/0", password_file=str(path), environ={PASSWORD_ENV: "other"}
    )
    from_env = RedisSettings.from_environment(
        "redis://h:1/0", environ={PASSWORD_FILE_ENV: str(path), PASSWORD_ENV: "other"}
    )
    assert from_flag.password == from_env.password == SECRET


@pytest.mark.parametrize("content", [None, "\n"])
def test_a_missing_or_empty_password_file_is_an_error(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "password"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RedisSettingsError, match="password file"):
        RedisSettings.from_environment("redis://h:1/0", password_file=str(path), environ={})


def test_no_url_anywhere_is_an_error() -> None:
    with pytest.raises(RedisSettingsError, match=URL_ENV):
        RedisSettings.from_environment(environ={})


def test_tls_files_come_from_the_environment_and_must_be_readable(
    tmp_path: Path, ca_file: str
) -> None:
    settings = RedisSettings.from_environment(
        "rediss://h:1/0", environ={CA_ENV: ca_file, CERT_ENV: ca_file, KEY_ENV: ca_file}
    )
    assert (settings.ca_file, settings.cert_file, settings.key_file) == (ca_file,) * 3
    with pytest.raises(RedisSettingsError, match="CA file"):
        RedisSettings.from_environment(
            "rediss://h:1/0", ca_file=str(tmp_path / "missing.pem"), environ={}
        )


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("rediss://vlmq@localhost:6380/2", "rediss://vlmq@localhost:6380/2"),
        (f"redis://vlmq:{SECRET}@127.0.0.1:6379/0", "redis://vlmq:***@127.0.0.1:6379/0"),
        (f"redis://:{SECRET}@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
        (f"rediss://h:1/0?db=1&password={SECRET}", "rediss://h:1/0?db=1&password=***"),
        (f"unix:///run/redis.sock?password={SECRET}", "unix:///run/redis.sock?password=***"),
    ],
)
def test_masked_url_hides_only_the_password(url: str, masked: str) -> None:
    settings = RedisSettings(url)
    assert settings.masked_url == masked
    assert SECRET not in repr(settings)


def test_the_password_given_wins_over_the_one_in_the_url() -> None:
    # redis-py lets the URL's password win over a keyword, so the URL it gets has none.
    settings = RedisSettings("redis://vlmq:old@127.0.0.1:6379/0", password=SECRET)
    assert settings.connection_url == "redis://vlmq@127.0.0.1:6379/0"
    assert settings.connection_kwargs()["password"] == SECRET
    pool_kwargs = settings.sync_client().connection_pool.connection_kwargs
    assert (pool_kwargs["username"], pool_kwargs["password"]) == ("vlmq", SECRET)


def test_rediss_settings_carry_the_tls_files(ca_file: str) -> None:
    settings = RedisSettings(
        "rediss://vlmq@127.0.0.1:6380/0", password=SECRET, ca_file=ca_file,
        cert_file="client.pem", key_file="client.key",
    )
    assert settings.is_tls
    assert settings.connection_kwargs() == {
        "password": SECRET, "ssl_ca_certs": ca_file, "ssl_certfile": "client.pem",
        "ssl_keyfile": "client.key",
    }
    pool = settings.sync_client().connection_pool
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["ssl_ca_certs"] == ca_file


def test_a_client_cert_without_its_key_is_refused() -> None:
    with pytest.raises(RedisSettingsError, match="both its cert and key"):
        RedisSettings("rediss://h:1/0", cert_file="client.pem")


def test_tls_files_with_a_plain_url_are_refused(ca_file: str) -> None:
    # Else the files would be ignored and the password would cross the network in clear.
    with pytest.raises(RedisSettingsError, match="rediss://"):
        RedisSettings("redis://h:1/0", ca_file=ca_file)


@pytest.mark.parametrize("url", [f"http://:{SECRET}@h:1/0", "127.0.0.1:6379", ""])
def test_a_bad_scheme_is_refused_without_showing_the_password(url: str) -> None:
    with pytest.raises(RedisSettingsError, match=r"redis://, rediss:// or unix://") as refusal:
        RedisSettings(url)
    assert SECRET not in str(refusal.value)


def test_a_port_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(RedisSettingsError, match="port") as refusal:
        RedisSettings(f"redis://:{SECRET}@h:abc/0")
    assert SECRET not in str(refusal.value)


def test_the_password_never_appears_in_repr(ca_file: str) -> None:
    settings = RedisSettings(
        f"rediss://vlmq:{SECRET}@h:1/0", password=SECRET + "2", ca_file=ca_file
    )
    shown = repr(settings)
    assert SECRET not in shown
    assert "rediss://vlmq:***@h:1/0" in shown and ca_file in shown
    # Nor in the configs that carry the settings, which tests and logs print.
    assert SECRET not in repr(QueueConfig(f"redis://:{SECRET}@h:1/0"))
    assert SECRET not in repr(AllocatorConfig(f"redis://:{SECRET}@h:1/0"))


def test_configs_take_a_url_or_settings() -> None:
    settings = RedisSettings("redis://vlmq@h:1/0", password=SECRET)
    assert QueueConfig(settings).redis is settings
    assert AllocatorConfig(settings).redis is settings
    assert QueueConfig("redis://h:1/0").redis == RedisSettings("redis://h:1/0")
    with pytest.raises(RedisSettingsError):
        AllocatorConfig("http://h:1/0")
