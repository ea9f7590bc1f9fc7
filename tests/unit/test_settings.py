"""Settings: defaults, the environment, overrides, and one clear line for a bad value."""

from __future__ import annotations

import pytest

from saga_orchestrator.console.serve import metrics_token
from saga_orchestrator.errors import ConfigurationError
from saga_orchestrator.security.limits import Limit
from saga_orchestrator.security.tenant_limits import LimitCeilings
from saga_orchestrator.security.tokens import generate_secret
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
    "METRICS_TOKEN",
    "SECRETS_DIR",
    "SECRET_ENV_TENANTS",
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


def test_the_metrics_token_is_read_from_the_environment_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = generate_secret()
    monkeypatch.setenv("METRICS_TOKEN", token)
    settings = load_settings()
    assert settings.metrics_token == token
    assert token not in repr(settings)
    assert metrics_token(settings) == token
    monkeypatch.delenv("METRICS_TOKEN")
    assert metrics_token(load_settings()) is None


@pytest.mark.parametrize("weak", ["", "hunter2", "changeme" * 4, "a" * 64])
def test_a_weak_metrics_token_is_refused_at_start_without_echoing_it(weak: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^METRICS_TOKEN: ") as caught:
        metrics_token(load_settings(metrics_token=weak))
    assert weak == "" or weak not in str(caught.value)


def test_the_metrics_token_must_not_be_the_jwt_secret() -> None:
    shared = generate_secret()
    with pytest.raises(ConfigurationError, match=r"^METRICS_TOKEN: must not be the JWT_SECRET"):
        metrics_token(load_settings(metrics_token=shared, jwt_secret=shared))
    assert metrics_token(load_settings(metrics_token=shared, jwt_secret=generate_secret()))


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


CEILING_VARIABLES = (
    "RATE_LIMIT_REQUESTS",
    "RATE_LIMIT_STARTS",
    "MAX_RUNNING_SAGAS_PER_TENANT",
    "RATE_LIMIT_REQUESTS_CEILING",
    "RATE_LIMIT_REQUESTS_BURST_CEILING",
    "RATE_LIMIT_STARTS_CEILING",
    "RATE_LIMIT_STARTS_BURST_CEILING",
    "MAX_RUNNING_SAGAS_PER_TENANT_CEILING",
)


@pytest.fixture
def no_limit_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CEILING_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_limit_variables")
def test_the_ceilings_default_to_the_defaults_so_an_admin_may_only_lower() -> None:
    assert load_settings().limit_ceilings() == LimitCeilings(
        requests=Limit(rate=100.0, burst=200),
        starts=Limit(rate=50.0, burst=100),
        max_running_sagas=None,  # no cap by default: no ceiling either
    )
    moved = load_settings(
        rate_limit_requests=30, rate_limit_starts=2.5, max_running_sagas_per_tenant=8
    )
    assert moved.limit_ceilings() == LimitCeilings(
        requests=Limit(rate=30.0, burst=60),
        starts=Limit(rate=2.5, burst=5),
        max_running_sagas=8,
    )


@pytest.mark.usefixtures("no_limit_variables")
def test_an_operator_raises_the_ceilings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_RUNNING_SAGAS_PER_TENANT", "10")
    monkeypatch.setenv("RATE_LIMIT_REQUESTS_CEILING", "1000")
    monkeypatch.setenv("RATE_LIMIT_STARTS_CEILING", "200")
    monkeypatch.setenv("RATE_LIMIT_STARTS_BURST_CEILING", "250")
    monkeypatch.setenv("MAX_RUNNING_SAGAS_PER_TENANT_CEILING", "40")
    assert load_settings().limit_ceilings() == LimitCeilings(
        requests=Limit(rate=1000.0, burst=2000),  # the burst follows the rate, as by default
        starts=Limit(rate=200.0, burst=250),
        max_running_sagas=40,
    )
    monkeypatch.setenv("RATE_LIMIT_REQUESTS_BURST_CEILING", "200")  # the default burst: allowed
    assert load_settings().limit_ceilings().requests == Limit(rate=1000.0, burst=200)


@pytest.mark.usefixtures("no_limit_variables")
@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"RATE_LIMIT_REQUESTS_CEILING": "-5"},
            "RATE_LIMIT_REQUESTS_CEILING: must be greater than 0 (got -5)",
        ),
        (
            {"RATE_LIMIT_STARTS_CEILING": "lots"},
            "RATE_LIMIT_STARTS_CEILING: must be a valid number, unable to parse string as a "
            "number (got lots)",
        ),
        (
            {"RATE_LIMIT_STARTS_CEILING": "inf"},
            "RATE_LIMIT_STARTS_CEILING: must be a finite number (got inf)",
        ),
        (
            {"RATE_LIMIT_REQUESTS_BURST_CEILING": "0"},
            "RATE_LIMIT_REQUESTS_BURST_CEILING: must be greater than 0 (got 0)",
        ),
        (
            {"RATE_LIMIT_REQUESTS_BURST_CEILING": "2.5"},
            "RATE_LIMIT_REQUESTS_BURST_CEILING: must be a valid integer, unable to parse string "
            "as an integer (got 2.5)",
        ),
        (
            {"RATE_LIMIT_REQUESTS_CEILING": "50"},
            "RATE_LIMIT_REQUESTS_CEILING: must be at least RATE_LIMIT_REQUESTS (100.0) (got 50)",
        ),
        (
            {"RATE_LIMIT_STARTS": "20", "RATE_LIMIT_STARTS_BURST_CEILING": "39"},
            "RATE_LIMIT_STARTS_BURST_CEILING: must be at least the default burst "
            "(40, twice RATE_LIMIT_STARTS) (got 39)",
        ),
        (
            {"MAX_RUNNING_SAGAS_PER_TENANT": "10", "MAX_RUNNING_SAGAS_PER_TENANT_CEILING": "9"},
            "MAX_RUNNING_SAGAS_PER_TENANT_CEILING: must be at least "
            "MAX_RUNNING_SAGAS_PER_TENANT (10) (got 9)",
        ),
        (
            {"MAX_RUNNING_SAGAS_PER_TENANT_CEILING": "100"},
            "MAX_RUNNING_SAGAS_PER_TENANT_CEILING: needs MAX_RUNNING_SAGAS_PER_TENANT: without "
            "it a tenant that sets no cap of its own runs with none, so a ceiling would bind "
            "only those that set one (got 100)",
        ),
    ],
)
def test_a_bad_ceiling_is_refused_at_startup_naming_it(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("environ", "tenants"),
    [
        ({}, ["default"]),
        ({"TENANT_ID": "acme"}, ["acme"]),
        ({"SECRET_ENV_TENANTS": "acme, globex,"}, ["acme", "globex"]),
        ({"SECRET_ENV_TENANTS": "*"}, ["*"]),
        ({"SECRET_ENV_TENANTS": ""}, []),
    ],
)
def test_env_secrets_are_for_the_nodes_own_tenant_unless_configured(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], tenants: list[str]
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    assert load_settings().secret_env_tenant_ids() == tenants


def test_secrets_dir_is_unset_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().secrets_dir is None
    monkeypatch.setenv("SECRETS_DIR", "/run/saga-secrets")
    assert load_settings().secrets_dir == "/run/saga-secrets"
