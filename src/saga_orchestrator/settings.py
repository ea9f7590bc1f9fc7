"""Settings, from environment variables: one :class:`Settings` object, built by
:func:`load_settings` where the process starts (the CLI, an app factory) and passed down.

There is no module-level instance, so a test builds the settings it needs in one line::

    settings = load_settings(database_url="sqlite:///:memory:", max_concurrent_sagas=10)

Keyword overrides win over the environment, which wins over the defaults. Invalid values
raise :class:`~saga_orchestrator.errors.ConfigurationError` with one line per problem set,
e.g. ``MAX_CONCURRENT_SAGAS: must be greater than 0 (got -3)``.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from saga_orchestrator.errors import ConfigurationError

if TYPE_CHECKING:
    from saga_orchestrator.definition.features import FeatureFlags
    from saga_orchestrator.security.tenant_limits import LimitCeilings

__all__ = ["DEFAULT_DATABASE_URL", "LogLevel", "Settings", "load_settings", "mask_password"]

DEFAULT_DATABASE_URL: Final = "sqlite:///saga.db"
"""The embedded default: a SQLite file ``saga.db`` in the working directory."""

_SECRET_FIELDS: Final = frozenset(
    {"database_url", "amqp_url", "jwt_secret", "metrics_token", "redis_url", "encryption_keys"}
    | {"database_app_url", "database_cluster_url"}
)
"""Fields whose value is never echoed in an error: a URL may carry a password."""


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Settings(BaseSettings):
    """The node's configuration; each field is read from the upper-cased environment variable
    of the same name (``DATABASE_URL``, ``MAX_CONCURRENT_SAGAS``...)."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", case_sensitive=False)

    database_url: str = Field(default=DEFAULT_DATABASE_URL, min_length=1, repr=False)
    """``sqlite:///path.db``, ``sqlite:///:memory:`` or ``postgresql://user@host:port/db``."""
    database_app_url: str | None = Field(default=None, min_length=1, repr=False)
    database_cluster_url: str | None = Field(default=None, min_length=1, repr=False)
    """PostgreSQL: logins of their own for the work done for tenants and for the chores that
    span them, whose only powers are ``saga_app`` and ``saga_cluster``, so that no statement
    can leave row-level security (refused at start if it could). Unset: ``DATABASE_URL``'s
    login, which migrates and can leave the roles (a warning says so). See docs/security.md."""
    max_concurrent_sagas: int = Field(default=1000, gt=0)
    """Instances this node drives at once; more wait for a slot."""
    log_level: LogLevel = LogLevel.INFO
    """``debug``, ``info``, ``warning`` or ``error`` (any case)."""
    tenant_id: str = Field(default="default", min_length=1)
    """The tenant of embedded use and of the CLI's commands."""
    amqp_url: str | None = Field(default=None, min_length=1, repr=False)
    """RabbitMQ (``amqp://user:pass@host:5672/vhost``): enables amqp steps and handlers served
    by ``saga worker`` processes. Unset: every handler must run in this process."""
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    """How participants reach this service (``https://saga.example.com``): sent to them as
    ``Saga-Callback-Url`` so an attempt answered with 202 can be completed by callback."""
    jwt_secret: str | None = Field(default=None, repr=False)
    """HS256 key of bearer tokens (≥ 32 random bytes). With no key at all, ``saga serve``
    makes one for the run, serves on loopback only and prints an admin token."""
    jwt_public_key_file: str | None = None
    """A PEM public key verifying RS256/ES256 tokens (see ``JWT_ALGORITHM``)."""
    jwt_algorithm: str = "RS256"
    """The algorithm pinned to ``JWT_PUBLIC_KEY_FILE`` (never taken from a token)."""
    jwt_jwks_file: str | None = None
    """A JWKS file of verification keys (``kid`` resolved only against it)."""
    jwt_jwks_url: str | None = Field(default=None, pattern=r"^https://[^\s]+$")
    """An https JWKS URL (cached; refreshed at most every 5 minutes on an unknown ``kid``)."""
    jwt_issuer: str | None = None
    """Required ``iss`` when set."""
    jwt_audience: str | None = None
    """Required ``aud`` when set."""
    jwt_tenant_claim: str = "tenant"
    jwt_roles_claim: str = "roles"
    metrics_token: str | None = Field(default=None, repr=False)
    """The platform's Prometheus scrape token: a static secret (≥ 32 random bytes, never the
    ``JWT_SECRET``; not a JWT) whose bearer reads every tenant's series on ``GET /metrics`` and
    nothing else. A tenant admin's token reads its own tenant's series there. Unset: no caller
    sees every tenant's."""
    token_file: str = ".saga-token"
    """Where ``saga serve`` writes the admin token it makes when no key is configured, and
    where the client commands look for a token when neither ``--token`` nor ``SAGA_TOKEN``
    gives one."""
    encryption_keys: str | None = Field(default=None, repr=False)
    """Seal saga histories at rest with AES-256-GCM: ``id=base64key,...`` (the first key
    seals; the others still open what they sealed, for rotation). Unset: stored in clear."""
    node_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
    """This node's name in the cluster registry (default: host name and a random suffix).
    Set it to something stable, such as a pod's name, so a restarted node takes its leases
    back at once."""
    cluster_enabled: bool = False
    """Several nodes share one PostgreSQL database: each drives the instances it holds a lease
    on and takes over those of nodes that stop. Off: this node is the only one and drives every
    unfinished instance (refused on SQLite when on: an embedded file serves one node)."""
    lease_ttl: float = Field(default=10.0, ge=1.0, le=600.0)
    """Seconds an instance lease lasts unless renewed: how soon a dead node's work resumes."""
    leader_lease_ttl: float = Field(default=10.0, ge=3.0, le=600.0)
    """Seconds the cluster's leader lease lasts unless renewed (every third of it): how soon
    another node takes over the leader's chores (outbox relay, retention, reaping)."""
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    """PostgreSQL connections this process opens at most for tenants' work (the chores that
    span tenants have 3 more); mind the server's max_connections times the processes."""
    claim_poll_interval: float = Field(default=1.0, gt=0.0, le=60.0)
    """Seconds between two looks for orphaned instances (notifications also wake the look)."""
    max_takeovers: int = Field(default=3, ge=1, le=100)
    """Take-overs after which an instance that keeps crashing its owners is quarantined."""
    retention_days: float | None = Field(default=None, gt=0)
    """Delete terminal instances (and their histories; not the audit log) this many days after
    they ended: a chore of the cluster's leader. Unset: keep them forever."""
    tls_cert_file: str | None = None
    """Serve the API over HTTPS with this PEM certificate chain (with ``TLS_KEY_FILE``)."""
    tls_key_file: str | None = None
    redis_url: str | None = Field(default=None, repr=False)
    """Redis for rate limits shared by every node (unset or down: per-node limits)."""
    max_running_sagas_per_tenant: int | None = Field(default=None, gt=0)
    """A tenant's cap on its sagas running on a node at once; a start over it gets 429."""
    rate_limit_requests: float = Field(default=100.0, gt=0)
    """API requests per second per tenant (bursts of twice as many)."""
    rate_limit_starts: float = Field(default=50.0, gt=0)
    """Saga starts per second per tenant (bursts of twice as many)."""
    rate_limit_principal_requests: float | None = Field(default=None, gt=0)
    """API requests per second of each caller (a token's subject) within its tenant, bursts
    of twice as many; unset: one caller may use all of its tenant's."""
    # The ceilings bound what a tenant's admins may set for their own tenant: an admin is the
    # tenant's, not the node's, and limits whose point is to protect the other tenants must not
    # be theirs to lift. Each defaults to the node's default, so an admin may only lower it.
    rate_limit_requests_ceiling: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """The highest request rate a tenant's admins may set for their tenant (default:
    ``RATE_LIMIT_REQUESTS``); not below it."""
    rate_limit_requests_burst_ceiling: int | None = Field(default=None, gt=0)
    """The largest request burst a tenant's admins may set (default: twice the rate ceiling,
    the rule of the defaults); not below the default burst."""
    rate_limit_starts_ceiling: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """The highest start rate a tenant's admins may set (default: ``RATE_LIMIT_STARTS``)."""
    rate_limit_starts_burst_ceiling: int | None = Field(default=None, gt=0)
    """The largest start burst a tenant's admins may set (default: twice the rate ceiling)."""
    max_running_sagas_per_tenant_ceiling: int | None = Field(default=None, gt=0)
    """The highest ``max_running_sagas`` a tenant's admins may set (default:
    ``MAX_RUNNING_SAGAS_PER_TENANT``; with that unset, no ceiling, as there is no cap)."""
    integration_events: str = ""
    """Tenants whose sagas publish lifecycle events to the ``saga.events`` topic exchange:
    comma-separated tenant ids, or ``*`` for all (needs AMQP_URL). Empty: none."""
    secrets_dir: str | None = Field(default=None, min_length=1)
    """A directory holding one directory per tenant (``SECRETS_DIR/<tenant id>/``): a
    participant service's ``file`` secret references and TLS files are relative paths in its
    tenant's directory, and cannot leave it. Unset: file references are refused."""
    secret_env_tenants: str | None = None
    """Tenants whose participant services may reference environment variables (only
    ``SAGA_SECRET_*`` ones): comma-separated tenant ids, or ``*`` for all. Variables are
    shared by every tenant of the node, so this is an opt-in. Unset: ``TENANT_ID`` only (a
    single-tenant install keeps working); empty: none."""
    saga_versioning_enabled: bool = True
    """Off: a saga name keeps its first version (registering another is refused)."""
    parallel_execution_enabled: bool = True
    """Off: definitions with parallel nodes are refused."""
    dynamic_routing_enabled: bool = True
    """Off: definitions with switch nodes are refused."""
    saga_composition_enabled: bool = True
    """Off: definitions with sub-saga nodes are refused."""

    def auth_configured(self) -> bool:
        return any(
            (self.jwt_secret, self.jwt_public_key_file, self.jwt_jwks_file, self.jwt_jwks_url)
        )

    def integration_event_tenants(self) -> list[str]:
        return [t.strip() for t in self.integration_events.split(",") if t.strip()]

    def secret_env_tenant_ids(self) -> list[str]:
        if self.secret_env_tenants is None:
            return [self.tenant_id]
        return [t.strip() for t in self.secret_env_tenants.split(",") if t.strip()]

    def feature_flags(self) -> FeatureFlags:
        # Imported here: loading settings (every CLI command) must not load the language.
        from saga_orchestrator.definition.features import FeatureFlags  # noqa: PLC0415

        return FeatureFlags(
            versioning=self.saga_versioning_enabled,
            parallel=self.parallel_execution_enabled,
            dynamic_routing=self.dynamic_routing_enabled,
            composition=self.saga_composition_enabled,
        )

    def limit_ceilings(self) -> LimitCeilings:
        """The most a tenant's admins may set for their tenant: the ``*_CEILING`` settings,
        or the node's defaults where they are unset."""
        # Imported here, as for feature_flags: the limiter loads the Redis client.
        from saga_orchestrator.security.tenant_limits import (  # noqa: PLC0415
            LimitCeilings,
            bucket_ceiling,
        )

        requests, starts = self.rate_limit_requests_ceiling, self.rate_limit_starts_ceiling
        running = self.max_running_sagas_per_tenant_ceiling
        return LimitCeilings(
            requests=bucket_ceiling(
                self.rate_limit_requests if requests is None else requests,
                self.rate_limit_requests_burst_ceiling,
            ),
            starts=bucket_ceiling(
                self.rate_limit_starts if starts is None else starts,
                self.rate_limit_starts_burst_ceiling,
            ),
            max_running_sagas=self.max_running_sagas_per_tenant if running is None else running,
        )

    @field_validator("rate_limit_requests_ceiling", "rate_limit_starts_ceiling")
    @classmethod
    def _rate_ceiling_not_below_the_default(
        cls, value: float | None, info: ValidationInfo
    ) -> float | None:
        # A ceiling below the default would bind only the tenants that set limits of their
        # own, while the others kept the higher default: most likely a mistake, so refused.
        setting = (info.field_name or "").removesuffix("_ceiling")
        default = info.data.get(setting)
        if value is not None and default is not None and value < default:
            raise _below_default(f"{setting.upper()} ({default})")
        return value

    @field_validator("rate_limit_requests_burst_ceiling", "rate_limit_starts_burst_ceiling")
    @classmethod
    def _burst_ceiling_not_below_the_default(
        cls, value: int | None, info: ValidationInfo
    ) -> int | None:
        setting = (info.field_name or "").removesuffix("_burst_ceiling")
        rate = info.data.get(setting)
        if value is None or rate is None:
            return value
        # Imported only when a burst ceiling is set: the rule lives with the buckets.
        from saga_orchestrator.security.limits import Limit  # noqa: PLC0415

        default = Limit.per_second(rate).burst
        if value < default:
            raise _below_default(f"the default burst ({default}, twice {setting.upper()})")
        return value

    @field_validator("max_running_sagas_per_tenant_ceiling")
    @classmethod
    def _running_ceiling_not_below_the_default(
        cls, value: int | None, info: ValidationInfo
    ) -> int | None:
        if value is None or "max_running_sagas_per_tenant" not in info.data:
            return value
        default = info.data["max_running_sagas_per_tenant"]
        if default is None:
            raise PydanticCustomError(
                "ceiling_without_cap",
                "needs MAX_RUNNING_SAGAS_PER_TENANT: without it a tenant that sets no cap of "
                "its own runs with none, so a ceiling would bind only those that set one",
            )
        if value < default:
            raise _below_default(f"MAX_RUNNING_SAGAS_PER_TENANT ({default})")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; ``overrides`` set to ``None`` count as not given."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as error:
        raise ConfigurationError(_one_line(error)) from None


def _below_default(default: str) -> PydanticCustomError:
    return PydanticCustomError(
        "ceiling_below_default", "must be at least {default}", {"default": default}
    )


def mask_password(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))


def _one_line(error: ValidationError) -> str:
    return "; ".join(_describe(details) for details in error.errors(include_url=False))


def _describe(details: ErrorDetails) -> str:
    field = str(details["loc"][0]) if details["loc"] else "settings"
    message = details["msg"]
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    elif message.startswith("String should have at least 1 character"):
        message = "must not be empty"
    else:
        message = message[:1].lower() + message[1:]
    if details["type"] == "extra_forbidden":
        return f"{field.upper()}: unknown setting"
    if field in _SECRET_FIELDS:
        return f"{field.upper()}: {message}"
    return f"{field.upper()}: {message} (got {_shown(details['input'])})"


def _shown(value: object) -> str:
    if isinstance(value, str) and value and value == value.strip():
        return value
    return repr(value)
