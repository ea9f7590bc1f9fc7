"""Settings: defaults, the environment, overrides, and one clear line for a bad value."""

from __future__ import annotations

import pytest

from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.settings import (
    DEFAULT_DATABASE_URL,
    LogLevel,
    Settings,
    load_settings,
    mask_password,
)

VARIABLES = (
    "DATABASE_URL",
    "MAX_CONCURRENT_SAGAS",
    "LOG_LEVEL",
    "TENANT_ID",
    "DATABASE_APP_URL",
    "DATABASE_CLUSTER_URL",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_defaults_are_the_embedded_database_and_documented_values() -> None:
    settings = load_settings()
    assert settings == Settings(
        database_url="sqlite:///saga.db",
        max_concurrent_sagas=1000,
        log_level=LogLevel.INFO,
        tenant_id="default",
    )
    assert DEFAULT_DATABASE_URL == "sqlite:///saga.db"


def test_environment_variables_set_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://saga@db:5432/saga")
    monkeypatch.setenv("MAX_CONCURRENT_SAGAS", "25")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("TENANT_ID", "acme")
    settings = load_settings()
    assert settings.database_url == "postgresql://saga@db:5432/saga"
    assert settings.max_concurrent_sagas == 25
    assert settings.log_level is LogLevel.DEBUG
    assert settings.tenant_id == "acme"


def test_overrides_win_over_the_environment_and_none_means_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("MAX_CONCURRENT_SAGAS", "7")
    settings = load_settings(database_url="sqlite:///:memory:", max_concurrent_sagas=None)
    assert settings.database_url == "sqlite:///:memory:"
    assert settings.max_concurrent_sagas == 7


@pytest.mark.parametrize("written", ["WARNING", "Warning", " warning "])
def test_log_level_ignores_case_and_spaces(monkeypatch: pytest.MonkeyPatch, written: str) -> None:
    monkeypatch.setenv("LOG_LEVEL", written)
    assert load_settings().log_level is LogLevel.WARNING


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.tenant_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MAX_CONCURRENT_SAGAS", "-3", "MAX_CONCURRENT_SAGAS: must be greater than 0 (got -3)"),
        ("MAX_CONCURRENT_SAGAS", "0", "MAX_CONCURRENT_SAGAS: must be greater than 0 (got 0)"),
        (
            "MAX_CONCURRENT_SAGAS",
            "many",
            "MAX_CONCURRENT_SAGAS: must be a valid integer, unable to parse string as an "
            "integer (got many)",
        ),
        (
            "LOG_LEVEL",
            "verbose",
            "LOG_LEVEL: must be 'debug', 'info', 'warning' or 'error' (got verbose)",
        ),
        ("TENANT_ID", "", "TENANT_ID: must not be empty (got '')"),
        ("DATABASE_URL", "", "DATABASE_URL: must not be empty"),
    ],
)
def test_an_invalid_variable_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert str(caught.value) == message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_several_invalid_values_still_make_one_line() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(max_concurrent_sagas=-1, log_level="loud")
    assert "\n" not in str(caught.value)
    assert str(caught.value) == (
        "MAX_CONCURRENT_SAGAS: must be greater than 0 (got -1); "
        "LOG_LEVEL: must be 'debug', 'info', 'warning' or 'error' (got loud)"
    )


def test_an_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^FLUX_CAPACITOR: unknown setting$"):
        load_settings(flux_capacitor="1.21 GW")


def test_secrets_never_appear_in_errors_or_repr() -> None:
    settings = load_settings(jwt_secret="k" * 40, redis_url="redis://:hunter2@cache:6379/0")
    assert "k" * 40 not in repr(settings)
    assert "hunter2" not in repr(settings)
    with pytest.raises(ConfigurationError) as raised:
        load_settings(jwt_secret=["not", "text"])
    assert "not" not in str(raised.value).split(":", 1)[1]


def test_the_database_url_never_appears_in_its_repr() -> None:
    settings = load_settings(database_url="postgresql://saga:s3cret@db/saga")
    assert "s3cret" not in repr(settings)


def test_the_pools_own_logins_come_from_the_environment_and_stay_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = load_settings()
    assert (defaults.database_app_url, defaults.database_cluster_url) == (None, None)
    monkeypatch.setenv("DATABASE_APP_URL", "postgresql://saga_tenants:s3cret@db/saga")
    monkeypatch.setenv("DATABASE_CLUSTER_URL", "postgresql://saga_chores:t0ps3cret@db/saga")
    settings = load_settings()
    assert settings.database_app_url == "postgresql://saga_tenants:s3cret@db/saga"
    assert settings.database_cluster_url == "postgresql://saga_chores:t0ps3cret@db/saga"
    assert "s3cret" not in repr(settings)
    with pytest.raises(ConfigurationError) as raised:
        load_settings(database_app_url=["postgresql://saga_tenants:s3cret@db/saga"])
    assert "s3cret" not in str(raised.value)
    assert str(raised.value).startswith("DATABASE_APP_URL: ")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://saga:s3cret@db:5432/saga", "postgresql://saga:***@db:5432/saga"),
        (
            "postgresql://saga:p%40ss@db/saga?sslmode=require",
            "postgresql://saga:***@db/saga?sslmode=require",
        ),
        ("postgresql://saga@db/saga", "postgresql://saga@db/saga"),
        ("sqlite:///saga.db", "sqlite:///saga.db"),
        ("sqlite:////srv/data/saga.db", "sqlite:////srv/data/saga.db"),
    ],
)
def test_mask_password_hides_only_the_password(url: str, masked: str) -> None:
    assert mask_password(url) == masked


def test_pool_size_and_leader_lease_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = load_settings()
    assert (defaults.database_pool_size, defaults.leader_lease_ttl) == (10, 10.0)
    monkeypatch.setenv("DATABASE_POOL_SIZE", "4")
    monkeypatch.setenv("LEADER_LEASE_TTL", "30")
    settings = load_settings()
    assert (settings.database_pool_size, settings.leader_lease_ttl) == (4, 30.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_POOL_SIZE", "0"), ("LEADER_LEASE_TTL", "1"), ("LEADER_LEASE_TTL", "never")],
)
def test_pool_size_and_leader_lease_refuse_nonsense(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        load_settings()
