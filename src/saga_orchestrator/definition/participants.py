"""Participant services: where HTTP steps may go, and how.

A definition never holds a URL: an HTTP step names a service registered here (per tenant), so
the registry is the whole list of places the orchestrator can call (the SSRF wall), and
secrets stay out of definitions and histories: a header's secret value is a *reference* to an
environment variable or a file, resolved at call time by the transport.
"""

from __future__ import annotations

from typing import Annotated, Final

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from saga_orchestrator.definition.models import Duration, Name
from saga_orchestrator.definition.network import private_host_reason

HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$"
CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
CREDENTIAL_WORDS: Final = (
    "token",
    "secret",
    "password",
    "passwd",
    "api-key",
    "api_key",
    "apikey",
    "credential",
)
"""A header whose (lower-cased) name contains one of these carries a credential."""


def is_credential_header(name: str) -> bool:
    """Whether a header's value is a credential, which must never be written out in a
    definition or a registry entry (only a secret reference, or a value from the context)."""
    lower = name.lower()
    return lower in CREDENTIAL_HEADERS or any(word in lower for word in CREDENTIAL_WORDS)


RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "idempotency-key",
        "traceparent",
        "saga-instance-id",
        "saga-step",
        "saga-completion-token",
    }
)
"""Set by the transport itself: a registry entry may not override them."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Model):
    """Where a secret lives; exactly one of ``env`` or ``file``."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    file: str | None = Field(default=None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference names exactly one of 'env' or 'file'")
        return self


class SecretHeader(_Model):
    secret: SecretRef
    prefix: str = Field(default="", max_length=100)
    """Put before the secret's value, e.g. ``"Bearer "``."""


HeaderValue = Annotated[str, Field(max_length=8192)] | SecretHeader


class TlsSettings(_Model):
    verify: bool = True
    """Verify the service's certificate (against ``ca_file`` if given, else the system's CAs)."""
    ca_file: str | None = None
    client_cert: str | None = None
    """A PEM file for mutual TLS (with ``client_key``, or holding the key too)."""
    client_key: str | None = None


class BreakerSettings(_Model):
    """Closed → open when the failure rate over ``window`` reaches ``failure_rate`` (with at
    least ``minimum_calls`` calls); open for ``open_for``; then ``half_open_probes`` trial calls
    close it again if they all succeed."""

    enabled: bool = True
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    window: Duration = 30.0
    minimum_calls: int = Field(default=10, ge=1, le=100_000)
    open_for: Duration = 10.0
    half_open_probes: int = Field(default=1, ge=1, le=100)


class RateSettings(_Model):
    """Calls per second to the service from one node, and the burst it may take at once."""

    per_second: float = Field(gt=0, le=1_000_000)
    burst: int = Field(default=1, ge=1, le=1_000_000)


class ParticipantService(_Model):
    """A registry entry: how to reach one participant service."""

    base_url: str = Field(max_length=2000)
    """``http(s)://host[:port][/prefix]``: steps' paths are appended to it."""
    description: str | None = Field(default=None, max_length=2000)
    headers: dict[Annotated[str, Field(pattern=HEADER_NAME)], HeaderValue] = Field(
        default_factory=dict, max_length=50
    )
    timeout: Duration | None = None
    """Caps every attempt's timeout (a step's own timeout applies when shorter)."""
    tls: TlsSettings = TlsSettings()
    allow_private_network: bool = False
    """Let this service live on loopback, link-local or private addresses (refused otherwise)."""
    max_concurrency: int = Field(default=100, ge=1, le=10_000)
    """Attempts in flight to this service at once, per node; more wait their turn."""
    max_response_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    circuit_breaker: BreakerSettings = BreakerSettings()
    rate_limit: RateSettings | None = None
    """Outbound pacing: calls over it wait (without using attempts) instead of being sent."""

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as error:
            raise ValueError(f"not a URL: {error}") from error
        if url.scheme not in ("http", "https"):
            raise ValueError("the base URL must be http:// or https://")
        if not url.host:
            raise ValueError("the base URL has no host")
        if url.userinfo:
            raise ValueError("credentials do not belong in the URL: use a secret header")
        if url.query or url.fragment:
            raise ValueError("the base URL may not have a query or a fragment")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, HeaderValue]) -> dict[str, HeaderValue]:
        reserved = sorted(name for name in value if name.lower() in RESERVED_HEADERS)
        if reserved:
            raise ValueError(f"headers set by the orchestrator cannot be configured: {reserved}")
        return value

    @model_validator(mode="after")
    def _check_network(self) -> ParticipantService:
        reason = private_host_reason(self.host)
        if reason is not None and not self.allow_private_network:
            raise ValueError(
                f"{reason}; set allow_private_network to call a service on a private network"
            )
        return self

    @property
    def host(self) -> str:
        return httpx.URL(self.base_url).host


class ParticipantRecord(_Model):
    """A registered service as the API shows it."""

    name: Name
    service: ParticipantService
    version: int
    """Bumped by every change, so a transport knows when to rebuild its client."""


__all__ = [
    "CREDENTIAL_HEADERS",
    "CREDENTIAL_WORDS",
    "BreakerSettings",
    "HeaderValue",
    "ParticipantRecord",
    "ParticipantService",
    "RateSettings",
    "SecretHeader",
    "SecretRef",
    "TlsSettings",
    "is_credential_header",
]
