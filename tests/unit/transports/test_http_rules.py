"""The HTTP transport's pure rules: URL confinement, outcome classification and Retry-After
(the integration tests drive the same rules over real sockets; secrets: test_secrets.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from saga_orchestrator.core.events import ErrorInfo
from saga_orchestrator.transports.base import StepOutcome
from saga_orchestrator.transports.http import (
    MAX_RETRY_AFTER,
    CallRefused,
    classify_response,
    classify_transport_error,
    parse_retry_after,
    target_url,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
REQUEST = httpx.Request("POST", "http://127.0.0.1/x")

# --- target_url ---


@pytest.mark.parametrize(
    ("base", "path", "url"),
    [
        ("https://api.example.com", "/orders", "https://api.example.com/orders"),
        ("https://api.example.com/v1", "/orders/7", "https://api.example.com/v1/orders/7"),
        ("https://api.example.com/v1", "/orders?id=1&x=/../", "https://api.example.com/v1/orders?id=1&x=/../"),
        ("http://10.0.0.1:8080/v1", "/a%20b", "http://10.0.0.1:8080/v1/a%20b"),
        ("https://api.example.com", "/files/a..b", "https://api.example.com/files/a..b"),
    ],
)  # fmt: skip
def test_paths_are_appended_to_the_base(base: str, path: str, url: str) -> None:
    assert str(target_url(base, path)) == url


@pytest.mark.parametrize(
    "path",
    [
        "//evil.com/x",
        "@evil.com",
        ":8443/x",
        ".evil.com/x",
        "x",
        "",
        "/../x",
        "/v1/../../x",
        "/%2e%2e/x",
        "/%2E%2e%2fx",
        "/.%2e/x",
        "/./x",
        "/a//b",
        "/a/%2F/b",
        "/a\\b",
        "/a%5c..%5cb",
        "/x#y",
    ],
)
def test_paths_that_could_leave_the_base_are_refused(path: str) -> None:
    with pytest.raises(CallRefused) as caught:
        target_url("https://api.example.com/v1", path)
    outcome = caught.value.outcome
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.retryable) == ("DestinationRefused", False)


# --- classify_response ---


def headers(**values: str) -> httpx.Headers:
    return httpx.Headers({name.replace("_", "-"): value for name, value in values.items()})


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b'{"id": 1}', StepOutcome(output={"id": 1})),
        (201, b"", StepOutcome(output=None)),
        (204, b"", StepOutcome(output=None)),
        (200, b"  \n", StepOutcome(output=None)),
        (200, b"done", StepOutcome(output="done")),
        (200, b"null", StepOutcome(output=None)),
        (202, b'{"ignored": 1}', StepOutcome(accepted=True)),
    ],
)
def test_2xx(status: int, body: bytes, outcome: StepOutcome) -> None:
    assert classify_response(status, headers(), body) == outcome


def test_a_2xx_over_the_cap_is_definite_and_unknown() -> None:
    error = classify_response(200, headers(), b"{", oversize=True).error

    assert error is not None
    assert (error.type, error.retryable, error.unknown) == ("ResponseTooLarge", False, True)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (404, False), (409, False), (422, False), (499, False),
     (408, True), (429, True), (500, True), (502, True), (503, True), (504, True)],
)  # fmt: skip
def test_error_statuses(status: int, retryable: bool) -> None:
    assert classify_response(status, headers(), b"nope").error == ErrorInfo(
        type=f"HTTP{status}", message="nope", retryable=retryable
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"title": "Out of stock", "detail": "SKU A1"}', "Out of stock: SKU A1"),
        (b'{"title": "Out of stock"}', "Out of stock"),
        (b'{"detail": "SKU A1"}', "SKU A1"),
        (b'{"error": "x"}', '{"error": "x"}'),
        (b"[1]", "[1]"),
        (b"{broken", "{broken"),
        (b"", "HTTP 422"),
    ],
)
def test_problem_details_make_the_message(body: bytes, message: str) -> None:
    error = classify_response(422, headers(content_type="application/problem+json"), body).error

    assert error is not None
    assert error.message == message


def test_a_4xx_ignores_retry_after() -> None:
    error = classify_response(400, headers(retry_after="5"), b"").error

    assert error is not None
    assert error.retry_after is None


# --- Retry-After ---


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("0", 0.0),
        ("120", 120.0),
        (" 5 ", 5.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("86400", MAX_RETRY_AFTER),
        ("inf", MAX_RETRY_AFTER),
        ("nan", None),
        ("Sun, 01 Jun 2025 12:01:30 GMT", 90.0),
        ("Sun, 01 Jun 2025 11:00:00 GMT", 0.0),
        ("Mon, 02 Jun 2025 12:00:00 GMT", MAX_RETRY_AFTER),
        ("Sunday, 01-Jun-25 12:00:10 GMT", 10.0),
        ("tomorrow", None),
        ("", None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


# --- transport errors ---


@pytest.mark.parametrize(
    ("error", "kind", "retryable", "unknown"),
    [
        (httpx.ConnectError("refused", request=REQUEST), "ConnectError", True, False),
        (httpx.ConnectTimeout("slow", request=REQUEST), "ConnectTimeout", True, False),
        (httpx.PoolTimeout("busy", request=REQUEST), "ConnectTimeout", True, False),
        (httpx.ReadTimeout("slow", request=REQUEST), "Timeout", True, True),
        (httpx.WriteTimeout("slow", request=REQUEST), "Timeout", True, True),
        (httpx.ReadError("reset", request=REQUEST), "ConnectionLost", True, True),
        (httpx.WriteError("broken pipe", request=REQUEST), "ConnectionLost", True, True),
        (httpx.RemoteProtocolError("disconnected", request=REQUEST), "ConnectionLost", True, True),
        (httpx.DecodingError("bad gzip", request=REQUEST), "ConnectionLost", True, True),
        (httpx.LocalProtocolError("b'secret'", request=REQUEST), "InvalidRequest", False, False),
        (httpx.UnsupportedProtocol("ftp", request=REQUEST), "DestinationRefused", False, False),
    ],
)  # fmt: skip
def test_transport_errors(
    error: httpx.HTTPError, kind: str, retryable: bool, unknown: bool
) -> None:
    info = classify_transport_error(error)

    assert (info.type, info.retryable, info.unknown) == (kind, retryable, unknown)
    assert "secret" not in info.message
