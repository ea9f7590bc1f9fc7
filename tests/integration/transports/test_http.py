"""The HTTP transport against real loopback servers: classification (semantics §3), the SSRF
wall at call time, secrets, circuit breakers and the concurrency limit."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from saga_orchestrator.core.events import ErrorInfo, Phase
from saga_orchestrator.definition.models import HttpCall, HttpSpec
from saga_orchestrator.definition.participants import (
    BreakerSettings,
    ParticipantRecord,
    ParticipantService,
    SecretHeader,
    SecretRef,
    TlsSettings,
)
from saga_orchestrator.transports.base import HttpCallSpec, StepOutcome, StepRequest
from saga_orchestrator.transports.breaker import BreakerBook, BreakerState
from saga_orchestrator.transports.http import HttpTransport, Resolver
from saga_orchestrator.transports.secrets import SecretPolicy
from tests.support.stub_participant import Canary, Reply, StubParticipant, StubTls

TENANT = "acme"
CALLBACK = "https://saga.example.com"


class Directory:
    """An in-memory participant registry."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], ParticipantRecord] = {}

    def register(self, name: str, service: ParticipantService, *, tenant: str = TENANT) -> None:
        previous = self.records.get((tenant, name))
        version = 1 if previous is None else previous.version + 1
        self.records[tenant, name] = ParticipantRecord(name=name, service=service, version=version)

    def register_unchecked(self, name: str, base_url: str) -> None:
        """An entry that slipped past registration's checks (made under older rules, say)."""
        previous = self.records.get((TENANT, name))
        self.records[TENANT, name] = ParticipantRecord.model_construct(
            name=name,
            service=ParticipantService.model_construct(base_url=base_url),
            version=1 if previous is None else previous.version + 1,
        )

    async def lookup(self, tenant_id: str, name: str) -> ParticipantRecord | None:
        return self.records.get((tenant_id, name))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def local(base_url: str, **settings: Any) -> ParticipantService:
    return ParticipantService(base_url=base_url, allow_private_network=True, **settings)


def step(
    path: str = "/orders",
    *,
    service: str = "orders",
    method: str = "POST",
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> StepRequest:
    call = HttpCallSpec(service=service, method=method, path=path, headers=headers or {}, body=body)
    return StepRequest(
        tenant_id=TENANT,
        instance_id="inst-1",
        node="reserve",
        phase=Phase.ACTION,
        attempt=2,
        idempotency_key="inst-1:reserve:action",
        target=HttpCall(http=HttpSpec(service=service, path="/orders", method="POST")),
        input={},
        action_output=None,
        timeout=timeout,
        call=call,
        completion_token="token-123",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


def error_of(outcome: StepOutcome) -> ErrorInfo:
    assert outcome.error is not None, outcome
    return outcome.error


def static_resolver(addresses: dict[str, list[str]], calls: list[str] | None = None) -> Resolver:
    async def resolve(host: str, port: int) -> Sequence[str]:
        if calls is not None:
            calls.append(host)
        if host not in addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return addresses[host]

    return resolve


@pytest.fixture
async def stub() -> AsyncIterator[StubParticipant]:
    async with StubParticipant() as server:
        yield server


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    async with Canary() as listener:
        yield listener


@pytest.fixture
def directory() -> Directory:
    return Directory()


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    """``SECRETS_DIR``, with the tenant's directory made."""
    root = tmp_path / "secrets"
    (root / TENANT).mkdir(parents=True)
    return root


@pytest.fixture
async def transport(directory: Directory, secrets_dir: Path) -> AsyncIterator[HttpTransport]:
    http = HttpTransport(
        directory,
        callback_base_url=CALLBACK,
        environ={},
        secrets=SecretPolicy.of([TENANT], secrets_dir),
    )
    yield http
    await http.aclose()


@pytest.fixture
def orders(directory: Directory, stub: StubParticipant) -> StubParticipant:
    directory.register("orders", local(stub.base_url))
    return stub


# --- success and the request sent ---


async def test_2xx_is_a_success_with_the_json_body_as_output(
    transport: HttpTransport, orders: StubParticipant
) -> None:
    orders.script("/orders", Reply(status=201, json={"id": 7}))

    outcome = await transport.call(step(body={"sku": "A1"}))

    assert outcome == StepOutcome(output={"id": 7})
    [call] = orders.calls
    assert (call.method, call.path, call.json) == ("POST", "/orders", {"sku": "A1"})
    assert call.headers["content-type"] == "application/json"


async def test_the_orchestrators_headers_are_sent_and_cannot_be_overridden(
    transport: HttpTransport, orders: StubParticipant
) -> None:
    forged = {
        "Idempotency-Key": "forged",
        "saga-step": "forged",
        "Host": "evil.example.com",
        "traceparent": "forged",
        "X-Custom": "kept",
    }
    await transport.call(step(headers=forged))

    headers = orders.calls[0].headers
    assert headers.getlist("idempotency-key") == ["inst-1:reserve:action"]
    assert headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert headers["saga-instance-id"] == "inst-1"
    assert headers.getlist("saga-step") == ["reserve"]
    assert headers["saga-phase"] == "action"
    assert headers["saga-attempt"] == "2"
    assert headers["saga-completion-token"] == "token-123"
    assert headers["saga-callback-url"] == (
        f"{CALLBACK}/api/v1/sagas/instances/inst-1/steps/reserve"
    )
    assert headers["host"] == f"127.0.0.1:{orders.port}"
    assert headers["x-custom"] == "kept"


async def test_the_path_and_query_go_under_the_base_path(
    directory: Directory, transport: HttpTransport, stub: StubParticipant
) -> None:
    directory.register("orders", local(f"{stub.base_url}/api/v2"))

    outcome = await transport.call(step("/orders/42?expand=lines"))

    assert outcome.succeeded
    assert [(c.path, c.query) for c in stub.calls] == [("/api/v2/orders/42", "expand=lines")]


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_get_and_delete_send_no_body(
    transport: HttpTransport, orders: StubParticipant, method: str
) -> None:
    await transport.call(step(method=method, body={"ignored": True}))

    [call] = orders.calls
    assert (call.method, call.body) == (method, b"")
    assert "content-type" not in call.headers


async def test_a_null_body_sends_no_content(
    transport: HttpTransport, orders: StubParticipant
) -> None:
    await transport.call(step(body=None))

    assert orders.calls[0].body == b""
    assert "content-type" not in orders.calls[0].headers


@pytest.mark.parametrize(
    ("reply", "output"),
    [
        (Reply(body=b""), None),
        (Reply(body=b"plain text", headers={"Content-Type": "text/plain"}), "plain text"),
        (Reply(json=[1, 2]), [1, 2]),
    ],
)
async def test_2xx_output_is_json_text_or_none(
    transport: HttpTransport, orders: StubParticipant, reply: Reply, output: Any
) -> None:
    orders.script("/orders", reply)

    assert await transport.call(step()) == StepOutcome(output=output)


async def test_202_means_accepted_for_an_asynchronous_completion(
    transport: HttpTransport, orders: StubParticipant
) -> None:
    orders.script("/orders", Reply(status=202, json={"queued": True}))

    assert await transport.call(step()) == StepOutcome(accepted=True)


async def test_an_unregistered_service_is_a_definite_failure(transport: HttpTransport) -> None:
    error = error_of(await transport.call(step(service="ghost")))

    assert (error.type, error.retryable, error.unknown) == (
        "ParticipantNotRegistered",
        False,
        False,
    )


# --- failures ---


async def test_4xx_is_definite_with_the_problem_title_and_detail(
    transport: HttpTransport, orders: StubParticipant
) -> None:
    problem = {"type": "about:blank", "title": "Out of stock", "detail": "SKU A1 is gone"}
    orders.script(
        "/orders",
        Reply(status=409, json=problem, headers={"Content-Type": "application/problem+json"}),
    )

    error = error_of(await transport.call(step()))

    assert error == ErrorInfo(
        type="HTTP409", message="Out of stock: SKU A1 is gone", retryable=False
    )


async def test_4xx_without_a_problem_quotes_the_first_200_characters(
    transport: HttpTransport, orders: StubParticipant
) -> None:
    orders.script("/orders", Reply(status=400, body=b"x" * 500))

    error = error_of(await transport.call(step()))

    assert (error.type, error.message, error.retryable) == ("HTTP400", "x" * 200, False)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_5xx_408_and_429_are_retryable(
    transport: HttpTransport, orders: StubParticipant, status: int
) -> None:
    orders.script("/orders", Reply(status=status, body=b"busy"))

    error = error_of(await transport.call(step()))

    assert error == ErrorInfo(type=f"HTTP{status}", message="busy", retryable=True)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("7", 7.0),
        ("999999", 3600.0),
        (format_datetime(datetime(2001, 1, 1, tzinfo=UTC), usegmt=True), 0.0),
        (format_datetime(datetime.now(UTC) + timedelta(days=3), usegmt=True), 3600.0),
        ("soon", None),
    ],
)
async def test_retry_after_is_honoured_in_seconds_or_as_a_date(
    transport: HttpTransport, orders: StubParticipant, retry_after: str, expected: float | None
) -> None:
    orders.script("/orders", Reply(status=503, headers={"Retry-After": retry_after}))

    assert error_of(await transport.call(step())).retry_after == expected


async def test_retry_after_as_a_near_date_counts_down_from_now(
    transport: HttpTransport, orders: StubParticipant
) -> None:
    when = datetime.now(UTC) + timedelta(minutes=10)
    orders.script(
        "/orders", Reply(status=429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    )

    retry_after = error_of(await transport.call(step())).retry_after

    assert retry_after is not None
    assert 500 < retry_after <= 600


async def test_a_2xx_larger_than_the_cap_is_definite_and_unknown(
    directory: Directory, transport: HttpTransport, stub: StubParticipant
) -> None:
    directory.register("orders", local(stub.base_url, max_response_bytes=1024))
    stub.script("/orders", Reply(body=b"y" * 1025), Reply(body=b"y" * 1024))

    error = error_of(await transport.call(step()))
    fits = await transport.call(step())

    assert (error.type, error.retryable, error.unknown) == ("ResponseTooLarge", False, True)
    assert fits == StepOutcome(output="y" * 1024)


async def test_an_error_body_over_the_cap_is_truncated_not_refused(
    directory: Directory, transport: HttpTransport, stub: StubParticipant
) -> None:
    directory.register("orders", local(stub.base_url, max_response_bytes=1024))
    stub.script("/orders", Reply(status=500, body=b"z" * 100_000))

    error = error_of(await transport.call(step()))

    assert (error.type, error.message, error.retryable) == ("HTTP500", "z" * 200, True)


async def test_connection_refused_is_retryable_and_nothing_was_sent(
    directory: Directory, transport: HttpTransport
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    directory.register("orders", local(f"http://127.0.0.1:{port}"))

    error = error_of(await transport.call(step()))

    assert (error.type, error.retryable, error.unknown) == ("ConnectError", True, False)


async def test_a_dns_failure_is_retryable_and_nothing_was_sent(directory: Directory) -> None:
    directory.register("orders", ParticipantService(base_url="http://orders.example.com"))
    transport = HttpTransport(directory, resolver=static_resolver({}))
    try:
        error = error_of(await transport.call(step()))
    finally:
        await transport.aclose()

    assert (error.type, error.retryable, error.unknown) == ("DnsError", True, False)


async def test_a_timeout_after_sending_is_unknown(
    transport: HttpTransport, orders: StubParticipant
) -> None:
    orders.script("/orders", Reply(gate=asyncio.Event()))  # never answers

    error = error_of(await transport.call(step(timeout=0.2)))

    assert (error.type, error.retryable, error.unknown) == ("Timeout", True, True)
    assert len(orders.calls) == 1


async def test_the_services_timeout_caps_the_steps(
    directory: Directory, transport: HttpTransport, stub: StubParticipant
) -> None:
    directory.register("orders", local(stub.base_url, timeout=0.2))
    stub.script("/orders", Reply(gate=asyncio.Event()))

    error = error_of(await transport.call(step(timeout=3600)))

    assert (error.type, error.unknown) == ("Timeout", True)


async def test_a_connection_dropped_after_sending_is_unknown(
    transport: HttpTransport, orders: StubParticipant
) -> None:
    orders.script("/orders", Reply(drop=True))

    error = error_of(await transport.call(step()))

    assert (error.type, error.retryable, error.unknown) == ("ConnectionLost", True, True)
    assert len(orders.calls) == 1


# --- secrets ---


async def test_secret_headers_come_from_the_environment_and_from_files(
    directory: Directory, stub: StubParticipant, secrets_dir: Path
) -> None:
    token_file = secrets_dir / TENANT / "api-key"
    token_file.write_text("file-secret\n")
    directory.register(
        "orders",
        local(
            stub.base_url,
            headers={
                "Authorization": SecretHeader(
                    secret=SecretRef(env="SAGA_SECRET_ORDERS"), prefix="Bearer "
                ),
                "X-Api-Key": SecretHeader(secret=SecretRef(file="api-key")),
                "X-Plain": "plain",
            },
        ),
    )
    transport = HttpTransport(
        directory,
        environ={"SAGA_SECRET_ORDERS": "env-secret"},
        secrets=SecretPolicy.of([TENANT], secrets_dir),
    )
    try:
        await transport.call(step())
        token_file.write_text("rotated")
        await transport.call(step())
    finally:
        await transport.aclose()

    first, second = stub.calls
    assert first.headers["authorization"] == "Bearer env-secret"
    assert first.headers["x-api-key"] == "file-secret"
    assert first.headers["x-plain"] == "plain"
    assert second.headers["x-api-key"] == "rotated"


async def test_a_missing_secret_is_retryable_names_the_reference_and_sends_nothing(
    directory: Directory, transport: HttpTransport, stub: StubParticipant
) -> None:
    for header in (SecretRef(env="SAGA_SECRET_NOT_SET"), SecretRef(file="nope")):
        directory.register(
            "orders", local(stub.base_url, headers={"X-Key": SecretHeader(secret=header)})
        )

        error = error_of(await transport.call(step()))

        assert (error.type, error.retryable, error.unknown) == ("SecretUnavailable", True, False)
        assert ("env:SAGA_SECRET_NOT_SET" if header.env else "file:nope") in error.message
    assert stub.calls == []


async def test_secret_values_never_appear_in_error_messages(
    directory: Directory, stub: StubParticipant
) -> None:
    directory.register(
        "orders",
        local(
            stub.base_url,
            headers={"X-Key": SecretHeader(secret=SecretRef(env="SAGA_SECRET_KEY"))},
        ),
    )
    stub.script("/orders", Reply(status=401, body=b"bad key s3cr3t-value, try again"))
    transport = HttpTransport(
        directory,
        environ={"SAGA_SECRET_KEY": "s3cr3t-value"},
        secrets=SecretPolicy.of([TENANT]),
    )
    try:
        error = error_of(await transport.call(step()))
    finally:
        await transport.aclose()

    assert error.message == "bad key [redacted], try again"


NODE_ENVIRON = {"JWT_SECRET": "node-jwt-key", "SAGA_SECRET_ORDERS": "env-secret"}


@pytest.mark.parametrize(
    ("ref", "policy"),
    [
        # Registered before the rules, or on a node with other settings:
        ({"env": "JWT_SECRET"}, "allowed"),
        ({"file": "/proc/self/environ"}, "allowed"),
        ({"file": "../other/token"}, "allowed"),
        # Settings changed since registration:
        ({"env": "SAGA_SECRET_ORDERS"}, "no env"),
        ({"file": "token"}, "no dir"),
    ],
)
async def test_a_reference_the_rules_refuse_at_call_time_is_not_sent(
    directory: Directory, stub: StubParticipant, secrets_dir: Path, ref: dict[str, str], policy: str
) -> None:
    (secrets_dir / TENANT / "token").write_text("file-secret")
    (secrets_dir / "other").mkdir()
    (secrets_dir / "other" / "token").write_text("other-secret")
    policies = {
        "allowed": SecretPolicy.of([TENANT], secrets_dir),
        "no env": SecretPolicy.of([], secrets_dir),
        "no dir": SecretPolicy.of([TENANT]),
    }
    directory.register("orders", local(stub.base_url, headers={"X-Key": {"secret": ref}}))
    transport = HttpTransport(directory, environ=NODE_ENVIRON, secrets=policies[policy])
    try:
        error = error_of(await transport.call(step()))
    finally:
        await transport.aclose()

    assert (error.type, error.retryable, error.unknown) == ("SecretRefused", False, False)
    [(source, name)] = ref.items()
    assert error.message.startswith(f"secret {source}:{name} is refused: ")
    for value in ("node-jwt-key", "env-secret", "file-secret", "other-secret"):
        assert value not in error.message
    assert stub.calls == []


async def test_a_link_swapped_out_of_the_tenant_directory_after_registration_is_refused(
    directory: Directory,
    transport: HttpTransport,
    stub: StubParticipant,
    secrets_dir: Path,
    tmp_path: Path,
) -> None:
    (secrets_dir / TENANT / "v1").write_text("file-secret")
    (tmp_path / "node-file").write_text("node-secret")
    link = secrets_dir / TENANT / "token"
    link.symlink_to("v1")
    directory.register(
        "orders", local(stub.base_url, headers={"X-Key": {"secret": {"file": "token"}}})
    )

    assert (await transport.call(step())).succeeded
    link.unlink()
    link.symlink_to(tmp_path / "node-file")
    error = error_of(await transport.call(step()))

    assert (error.type, error.retryable) == ("SecretRefused", False)
    assert "leads out of the tenant's secrets directory" in error.message
    assert [call.headers["x-key"] for call in stub.calls] == ["file-secret"]


async def test_a_literal_credential_registered_under_older_rules_is_not_sent(
    directory: Directory, transport: HttpTransport, stub: StubParticipant
) -> None:
    directory.register("orders", local(stub.base_url, headers={"Authorization": "Bearer xyz"}))

    error = error_of(await transport.call(step()))

    assert (error.type, error.retryable) == ("SecretRefused", False)
    assert "header 'Authorization' carries a credential" in error.message
    assert "xyz" not in error.message
    assert stub.calls == []


# --- the SSRF wall ---


async def test_a_redirect_is_refused_and_never_followed(
    transport: HttpTransport, orders: StubParticipant, canary: Canary
) -> None:
    location = f"http://127.0.0.1:{canary.port}/internal"
    orders.script("/orders", Reply(status=302, headers={"Location": location}))

    error = error_of(await transport.call(step()))

    assert (error.type, error.retryable) == ("RedirectRefused", False)
    assert "302" in error.message
    assert canary.connections == 0


@pytest.mark.parametrize(
    "path",
    [
        "//evil.example.com/x",
        "@evil.example.com/x",
        "/../admin",
        "/api/../../admin",
        "/%2e%2e/admin",
        "/%2E%2E%2Fadmin",
        "/a//b",
        "/a\\..\\b",
        "/x#fragment",
        "/./x",
    ],
)
async def test_paths_that_could_leave_the_base_url_are_refused(
    directory: Directory, transport: HttpTransport, stub: StubParticipant, path: str
) -> None:
    directory.register("orders", local(f"{stub.base_url}/api"))

    error = error_of(await transport.call(step(path)))

    assert (error.type, error.retryable) == ("DestinationRefused", False)
    assert stub.calls == []


async def test_a_name_resolving_to_a_private_address_is_refused(
    directory: Directory, canary: Canary
) -> None:
    directory.register(
        "orders", ParticipantService(base_url=f"http://api.example.com:{canary.port}")
    )
    for answer in (["127.0.0.1"], ["93.184.216.34", "10.1.2.3"], ["::ffff:127.0.0.1"]):
        transport = HttpTransport(directory, resolver=static_resolver({"api.example.com": answer}))
        try:
            error = error_of(await transport.call(step()))
        finally:
            await transport.aclose()

        assert (error.type, error.retryable) == ("DestinationRefused", False), answer
    assert canary.connections == 0


async def test_the_canary_would_see_a_call_that_is_allowed(
    directory: Directory, canary: Canary
) -> None:
    """The control for the refusals above: the canary does count connections."""
    directory.register("orders", local(f"http://api.example.com:{canary.port}"))
    transport = HttpTransport(
        directory, resolver=static_resolver({"api.example.com": ["127.0.0.1"]})
    )
    try:
        error = error_of(await transport.call(step()))
    finally:
        await transport.aclose()

    assert error.type == "ConnectionLost"
    assert canary.connections == 1


async def test_the_connection_goes_to_the_checked_address_with_the_original_host(
    directory: Directory, stub: StubParticipant
) -> None:
    directory.register("orders", local(f"http://orders.internal:{stub.port}"))
    lookups: list[str] = []
    transport = HttpTransport(
        directory, resolver=static_resolver({"orders.internal": ["127.0.0.1"]}, lookups)
    )
    try:
        outcomes = [await transport.call(step()) for _ in range(2)]
    finally:
        await transport.aclose()

    assert all(outcome.succeeded for outcome in outcomes)
    assert lookups == ["orders.internal", "orders.internal"]  # resolved and checked per call
    assert [call.headers["host"] for call in stub.calls] == [f"orders.internal:{stub.port}"] * 2


async def test_the_system_resolver_is_checked_too(
    directory: Directory, transport: HttpTransport, stub: StubParticipant
) -> None:
    """``localhost`` resolves to loopback: refused at call time, even for an entry that
    slipped past registration; allowed with ``allow_private_network``."""
    url = f"http://localhost:{stub.port}"
    directory.register_unchecked("orders", url)
    refused = error_of(await transport.call(step()))
    directory.register("orders", local(url))
    allowed = await transport.call(step())

    assert refused.type == "DestinationRefused"
    assert allowed.succeeded
    assert len(stub.calls) == 1


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "127.1"])
async def test_ip_literals_in_legacy_forms_are_checked_without_dns(
    directory: Directory, canary: Canary, host: str
) -> None:
    lookups: list[str] = []
    transport = HttpTransport(directory, resolver=static_resolver({}, lookups))
    url = f"http://{host}:{canary.port}"
    try:
        directory.register_unchecked("orders", url)
        refused = error_of(await transport.call(step()))
        assert canary.connections == 0
        directory.register("orders", local(url))
        reached = error_of(await transport.call(step()))
    finally:
        await transport.aclose()

    assert refused.type == "DestinationRefused"
    assert reached.type == "ConnectionLost"  # the canary hangs up: it was reached, as 127.0.0.1
    assert canary.connections == 1
    assert lookups == []


async def test_a_base_url_httpx_cannot_parse_is_refused(
    directory: Directory, transport: HttpTransport
) -> None:
    directory.register_unchecked("orders", "http://0177.0.0.1:8080")  # octal 127.0.0.1

    error = error_of(await transport.call(step()))

    assert (error.type, error.retryable) == ("DestinationRefused", False)


# --- circuit breaker ---


async def test_the_breaker_opens_on_failures_then_a_probe_closes_it(
    directory: Directory, stub: StubParticipant
) -> None:
    clock = FakeClock()
    breakers = BreakerBook(clock=clock)
    settings = BreakerSettings(minimum_calls=3, failure_rate=0.5, window=60, open_for=10)
    directory.register("orders", local(stub.base_url, circuit_breaker=settings))
    stub.set_default(Reply(status=503), path="/orders")
    transport = HttpTransport(directory, breakers=breakers)
    try:
        failures = [error_of(await transport.call(step())).type for _ in range(3)]
        clock.now += 4
        rejected = [error_of(await transport.call(step())) for _ in range(2)]
        calls_while_open = len(stub.calls)
        clock.now += 6
        stub.set_default(Reply(json={"ok": True}), path="/orders")
        probe = await transport.call(step())
        after = await transport.call(step())
    finally:
        await transport.aclose()

    assert failures == ["HTTP503"] * 3
    assert calls_while_open == 3
    assert (
        rejected
        == [
            ErrorInfo(
                type="CircuitOpen",
                message="the circuit breaker of 'orders' is open; retry in 6.0s",
                retryable=True,
                retry_after=6.0,
                budgeted=False,
            )
        ]
        * 2
    )
    assert probe.succeeded and after.succeeded
    assert len(stub.calls) == 5
    assert breakers.state_of(TENANT, "orders") is BreakerState.CLOSED


async def test_a_failed_probe_opens_the_breaker_again(
    directory: Directory, stub: StubParticipant
) -> None:
    clock = FakeClock()
    breakers = BreakerBook(clock=clock)
    settings = BreakerSettings(minimum_calls=1, failure_rate=1.0, open_for=5)
    directory.register("orders", local(stub.base_url, circuit_breaker=settings))
    stub.set_default(Reply(status=500), path="/orders")
    transport = HttpTransport(directory, breakers=breakers)
    try:
        await transport.call(step())
        clock.now += 5
        probe = error_of(await transport.call(step()))
        rejected = error_of(await transport.call(step()))
    finally:
        await transport.aclose()

    assert probe.type == "HTTP500"
    assert (rejected.type, rejected.retry_after) == ("CircuitOpen", 5.0)
    assert len(stub.calls) == 2
    assert breakers.state_of(TENANT, "orders") is BreakerState.OPEN


async def test_definite_4xx_answers_do_not_open_the_breaker(
    directory: Directory, stub: StubParticipant
) -> None:
    breakers = BreakerBook(clock=FakeClock())
    settings = BreakerSettings(minimum_calls=2, failure_rate=0.5)
    directory.register("orders", local(stub.base_url, circuit_breaker=settings))
    stub.set_default(Reply(status=404), path="/orders")
    transport = HttpTransport(directory, breakers=breakers)
    try:
        errors = [error_of(await transport.call(step())).type for _ in range(5)]
    finally:
        await transport.aclose()

    assert errors == ["HTTP404"] * 5
    assert breakers.state_of(TENANT, "orders") is BreakerState.CLOSED


async def test_a_disabled_breaker_never_rejects(
    directory: Directory, stub: StubParticipant
) -> None:
    settings = BreakerSettings(enabled=False, minimum_calls=1)
    directory.register("orders", local(stub.base_url, circuit_breaker=settings))
    stub.set_default(Reply(status=503), path="/orders")
    transport = HttpTransport(directory, breakers=BreakerBook(clock=FakeClock()))
    try:
        errors = [error_of(await transport.call(step())).type for _ in range(4)]
    finally:
        await transport.aclose()

    assert errors == ["HTTP503"] * 4
    assert len(stub.calls) == 4


# --- pooling and concurrency ---


async def test_the_concurrency_limit_holds_calls_back(
    directory: Directory, transport: HttpTransport, stub: StubParticipant
) -> None:
    directory.register("orders", local(stub.base_url, max_concurrency=3))
    gate = asyncio.Event()
    stub.set_default(Reply(gate=gate), path="/orders")

    calls = [asyncio.create_task(transport.call(step())) for _ in range(10)]
    await stub.wait_in_flight(3)
    gate.set()
    outcomes = await asyncio.gather(*calls)

    assert all(outcome.succeeded for outcome in outcomes)
    assert len(stub.calls) == 10
    assert stub.max_in_flight == 3


async def test_a_new_registry_version_takes_effect_on_the_next_call(
    directory: Directory, transport: HttpTransport, stub: StubParticipant
) -> None:
    directory.register("orders", local(stub.base_url, headers={"X-Version": "1"}))
    gate = asyncio.Event()
    stub.script("/orders", Reply(gate=gate))
    in_flight = asyncio.create_task(transport.call(step()))
    await stub.wait_in_flight(1)

    directory.register("orders", local(f"{stub.base_url}/v2", headers={"X-Version": "2"}))
    second = await transport.call(step())
    gate.set()
    first = await in_flight

    assert first.succeeded and second.succeeded  # the old client outlived its replacement
    assert [(c.path, c.headers["x-version"]) for c in stub.calls] == [
        ("/orders", "1"),
        ("/v2/orders", "2"),
    ]


# --- TLS ---


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``SECRETS_DIR`` whose tenant directory holds self-signed certificates (each its own
    CA): ``orders`` and ``other`` for servers, ``client`` for mutual TLS."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make certificates")
    root = tmp_path_factory.mktemp("pki")
    folder = root / TENANT
    folder.mkdir()
    for name, san in (("orders", "orders.internal"), ("other", "other.internal"), ("client", "c")):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.pem"),
             "-subj", f"/CN={san}", "-addext", f"subjectAltName=DNS:{san}"],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return root


def tls_call_transport(directory: Directory, pki: Path) -> HttpTransport:
    return HttpTransport(
        directory,
        resolver=static_resolver({"orders.internal": ["127.0.0.1"]}),
        secrets=SecretPolicy.of([], pki),
    )


def server_tls(pki: Path, name: str, **more: str) -> StubTls:
    """The stub's own files (the server side reads them from anywhere)."""
    return StubTls(
        certfile=str(pki / TENANT / f"{name}.pem"),
        keyfile=str(pki / TENANT / f"{name}.key"),
        **more,
    )


async def test_tls_verifies_the_name_while_connecting_to_the_checked_address(
    directory: Directory, pki: Path
) -> None:
    async with StubParticipant(tls=server_tls(pki, "orders")) as stub:
        url = f"https://orders.internal:{stub.port}"
        directory.register("orders", local(url, tls=TlsSettings(ca_file="orders.pem")))
        transport = tls_call_transport(directory, pki)
        try:
            outcome = await transport.call(step())
        finally:
            await transport.aclose()

    assert outcome.succeeded
    assert stub.calls[0].headers["host"] == f"orders.internal:{stub.port}"


async def test_a_certificate_for_another_name_is_refused_unless_verification_is_off(
    directory: Directory, pki: Path
) -> None:
    async with StubParticipant(tls=server_tls(pki, "other")) as stub:
        url = f"https://orders.internal:{stub.port}"
        trusted = TlsSettings(ca_file="other.pem")
        directory.register("orders", local(url, tls=trusted))
        transport = tls_call_transport(directory, pki)
        try:
            refused = error_of(await transport.call(step()))
            directory.register("orders", local(url, tls=TlsSettings(verify=False)))
            unverified = await transport.call(step())
        finally:
            await transport.aclose()

    assert (refused.type, refused.unknown) == ("ConnectError", False)
    assert "CERTIFICATE_VERIFY_FAILED" in refused.message
    assert unverified.succeeded
    assert len(stub.calls) == 1


async def test_a_client_certificate_is_presented_for_mutual_tls(
    directory: Directory, pki: Path
) -> None:
    tls = server_tls(pki, "orders", client_ca=str(pki / TENANT / "client.pem"))
    async with StubParticipant(tls=tls) as stub:
        settings = TlsSettings(
            ca_file="orders.pem", client_cert="client.pem", client_key="client.key"
        )
        directory.register("orders", local(f"https://orders.internal:{stub.port}", tls=settings))
        transport = tls_call_transport(directory, pki)
        try:
            outcome = await transport.call(step())
        finally:
            await transport.aclose()

    assert outcome.succeeded
    assert len(stub.calls) == 1


async def test_unreadable_tls_files_are_retryable_and_send_nothing(
    directory: Directory, transport: HttpTransport, stub: StubParticipant
) -> None:
    settings = TlsSettings(ca_file="missing.pem")
    directory.register("orders", local(stub.base_url, tls=settings))

    error = error_of(await transport.call(step()))

    assert (error.type, error.retryable, error.unknown) == ("TlsUnavailable", True, False)
    assert stub.calls == []


@pytest.mark.parametrize(
    "tls",
    [
        {"ca_file": "/etc/ssl/certs/ca-certificates.crt"},
        {"client_cert": "../other/client.pem"},
        {"client_cert": "client.pem", "client_key": "/proc/self/environ"},
    ],
)
async def test_tls_files_out_of_the_tenant_directory_are_refused_and_send_nothing(
    directory: Directory, transport: HttpTransport, stub: StubParticipant, tls: dict[str, str]
) -> None:
    directory.register("orders", local(stub.base_url, tls=TlsSettings(**tls)))

    error = error_of(await transport.call(step()))

    field, path = list(tls.items())[-1]
    assert (error.type, error.retryable) == ("SecretRefused", False)
    assert error.message.startswith(f"tls.{field} of 'orders': file:{path} is refused: ")
    assert stub.calls == []
