"""Registry entries: where HTTP steps may go (the SSRF wall at registration) and how."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from saga_orchestrator.definition.participants import (
    BreakerSettings,
    ParticipantRecord,
    ParticipantService,
    SecretHeader,
    SecretRef,
)


def refusal(**fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        ParticipantService.model_validate(fields)
    [error] = caught.value.errors()
    return str(error["msg"])


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "127.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::1]",
        "169.254.169.254",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.0.10",
        "100.64.0.1",
        "0.0.0.0",
        "localhost",
        "foo.localhost",
    ],
)
def test_private_hosts_are_refused_unless_allowed(host: str) -> None:
    url = f"http://{host}:8080/api"
    if host == "0177.0.0.1":  # httpx cannot parse an octal host at all
        assert refusal(base_url=url).startswith("Value error, not a URL")
        return
    message = refusal(base_url=url)
    allowed = ParticipantService(base_url=url, allow_private_network=True)

    assert "set allow_private_network" in message
    assert allowed.base_url == url


@pytest.mark.parametrize(
    "url",
    [
        "https://payments.example.com",
        "http://93.184.216.34:8080/v1",
        "https://[2606:4700::1111]/api",
    ],
)
def test_public_hosts_and_names_are_accepted(url: str) -> None:
    assert ParticipantService(base_url=url).base_url == url


def test_a_trailing_slash_is_dropped_from_the_base_url() -> None:
    assert ParticipantService(base_url="https://api.example.com/v1/").base_url == (
        "https://api.example.com/v1"
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://files.example.com", "the base URL must be http:// or https://"),
        ("https://user:pw@api.example.com", "credentials do not belong in the URL"),
        ("https://api.example.com/?debug=1", "may not have a query or a fragment"),
        ("https://api.example.com/#x", "may not have a query or a fragment"),
        ("https:///path", "the base URL has no host"),
    ],
)
def test_malformed_base_urls_are_refused(url: str, reason: str) -> None:
    assert reason in refusal(base_url=url)


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Idempotency-Key",
        "IDEMPOTENCY-KEY",
        "traceparent",
        "Saga-Instance-Id",
        "Saga-Step",
        "Saga-Completion-Token",
    ],
)
def test_headers_the_orchestrator_sets_cannot_be_configured(name: str) -> None:
    message = refusal(base_url="https://api.example.com", headers={name: "x"})

    assert f"headers set by the orchestrator cannot be configured: [{name!r}]" in message


def test_plain_and_secret_headers_are_accepted() -> None:
    service = ParticipantService(
        base_url="https://api.example.com",
        headers={
            "X-Tenant": "acme",
            "Authorization": {"secret": {"env": "SAGA_SECRET_PAYMENTS"}, "prefix": "Bearer "},
        },
    )

    assert service.headers == {
        "X-Tenant": "acme",
        "Authorization": SecretHeader(
            secret=SecretRef(env="SAGA_SECRET_PAYMENTS"), prefix="Bearer "
        ),
    }


def test_an_invalid_header_name_is_refused() -> None:
    with pytest.raises(ValidationError):
        ParticipantService(base_url="https://api.example.com", headers={"Bad Name": "x"})


@pytest.mark.parametrize(
    "fields",
    [{}, {"env": "SAGA_SECRET_TOKEN", "file": "payments/token"}, {"env": None, "file": None}],
)
def test_a_secret_reference_names_exactly_one_source(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="exactly one of 'env' or 'file'"):
        SecretRef.model_validate(fields)


@pytest.mark.parametrize("fields", [{"env": "SAGA_SECRET_TOKEN"}, {"file": "payments/token"}])
def test_a_secret_reference_with_one_source_is_accepted(fields: dict[str, str]) -> None:
    assert SecretRef.model_validate(fields).model_dump(exclude_none=True) == fields


@pytest.mark.parametrize("name", ["1TOKEN", "TOK-EN", "", "A" * 129])
def test_a_secret_env_name_must_be_a_variable_name(name: str) -> None:
    with pytest.raises(ValidationError):
        SecretRef(env=name)


def test_defaults() -> None:
    service = ParticipantService(base_url="https://api.example.com")

    assert (service.allow_private_network, service.max_concurrency) == (False, 100)
    assert service.max_response_bytes == 1_048_576
    assert service.tls.verify is True
    assert service.circuit_breaker == BreakerSettings()
    assert service.host == "api.example.com"


@pytest.mark.parametrize(
    "fields",
    [
        {"failure_rate": 0},
        {"failure_rate": 1.5},
        {"minimum_calls": 0},
        {"half_open_probes": 0},
        {"window": "0s"},
    ],
)
def test_breaker_settings_are_bounded(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BreakerSettings.model_validate(fields)


def test_breaker_durations_accept_units() -> None:
    settings = BreakerSettings.model_validate({"window": "1m", "open_for": "500ms"})

    assert (settings.window, settings.open_for) == (60.0, 0.5)


def test_a_record_carries_a_valid_name_and_version() -> None:
    service = ParticipantService(base_url="https://api.example.com")
    assert ParticipantRecord(name="payments", service=service, version=3).version == 3
    with pytest.raises(ValidationError):
        ParticipantRecord(name="has space", service=service, version=1)
