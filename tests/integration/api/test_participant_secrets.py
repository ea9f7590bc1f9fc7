"""What a tenant's admin may make the node send to a service it registered: only secrets of
its own (``SAGA_SECRET_*`` variables if the node allows its tenant, files in its directory
under ``SECRETS_DIR``), never a literal credential; refused at registration (422, nothing
stored) and again at call time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from saga_orchestrator.api import create_app
from saga_orchestrator.core.status import InstanceStatus
from saga_orchestrator.core.view import InstanceView
from saga_orchestrator.orchestrator import Orchestrator
from saga_orchestrator.security.tokens import Authenticator, AuthSettings, Role, generate_secret
from saga_orchestrator.security.tokens import mint_token as mint
from saga_orchestrator.transports.secrets import SecretPolicy
from tests.integration.api.support import FAST_OPTIONS, PROBLEM
from tests.support.stub_participant import StubParticipant

KEY = generate_secret()
ACME, GLOBEX = "acme", "globex"
BASE = "/api/v1/participants"
SAGA = {
    "name": "charge",
    "version": "1.0.0",
    "steps": [{"name": "charge", "action": {"http": {"service": "shop", "path": "/charge"}}}],
}


def admin(tenant: str) -> dict[str, str]:
    token = mint(KEY, subject=f"{tenant}-admin", tenant_id=tenant, roles=[Role.ADMIN], ttl=600)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    root = tmp_path / "secrets"
    for tenant in (ACME, GLOBEX):
        (root / tenant).mkdir(parents=True)
        (root / tenant / "token").write_text(f"{tenant}-file-secret\n")
    return root


def open_node(store_url: str, secrets: SecretPolicy) -> tuple[Orchestrator, FastAPI]:
    node = Orchestrator(
        store_url, tenant_id=ACME, secrets=secrets, callback_base_url="http://saga.test"
    )
    options = replace(FAST_OPTIONS, authenticator=Authenticator(AuthSettings(hmac_secret=KEY)))
    return node, create_app(node, options)


@pytest_asyncio.fixture
async def served(
    store_url: str, secrets_dir: Path
) -> AsyncIterator[tuple[Orchestrator, httpx.AsyncClient]]:
    """A node whose tenant ``acme`` may use env references; files under ``secrets_dir``."""
    node, app = open_node(store_url, SecretPolicy.of([ACME], secrets_dir))
    async with node, app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as client:
            yield node, client


@pytest.fixture
def client(served: tuple[Orchestrator, httpx.AsyncClient]) -> httpx.AsyncClient:
    return served[1]


def entry(header: Any, **more: Any) -> dict[str, Any]:
    return {"base_url": "https://shop.example.com", "headers": {"X-Shop-Key": header}, **more}


async def assert_refused(
    client: httpx.AsyncClient, tenant: str, body: dict[str, Any], *fragments: str
) -> str:
    answer = await client.put(f"{BASE}/shop", json=body, headers=admin(tenant))
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    detail: str = answer.json()["detail"]
    for fragment in fragments:
        assert fragment in detail
    listed = await client.get(BASE, headers=admin(tenant))
    assert listed.json()["items"] == []  # nothing stored
    return detail


@pytest.mark.parametrize("name", ["JWT_SECRET", "DATABASE_URL", "ENCRYPTION_KEYS", "REDIS_URL"])
async def test_a_node_setting_cannot_be_referenced(client: httpx.AsyncClient, name: str) -> None:
    await assert_refused(
        client,
        ACME,
        entry({"secret": {"env": name}}),
        f"headers.X-Shop-Key.secret.env: env:{name} is refused",
        "starting with SAGA_SECRET_",
    )


async def test_env_references_need_the_tenant_allowed(client: httpx.AsyncClient) -> None:
    body = entry({"secret": {"env": "SAGA_SECRET_SHOP"}})

    await assert_refused(client, GLOBEX, body, "SECRET_ENV_TENANTS")
    allowed = await client.put(f"{BASE}/shop", json=body, headers=admin(ACME))
    assert allowed.status_code == 201, allowed.text


@pytest.mark.parametrize("path", ["../globex/token", "GLOBEX_DIR/token", "/proc/self/environ"])
async def test_another_tenants_file_or_a_node_file_cannot_be_referenced(
    client: httpx.AsyncClient, secrets_dir: Path, path: str
) -> None:
    path = path.replace("GLOBEX_DIR", str(secrets_dir / GLOBEX))
    await assert_refused(
        client,
        ACME,
        entry({"secret": {"file": path}}),
        f"headers.X-Shop-Key.secret.file: file:{path} is refused",
    )


async def test_a_link_out_of_the_tenant_directory_is_refused(
    client: httpx.AsyncClient, secrets_dir: Path
) -> None:
    (secrets_dir / ACME / "theirs").symlink_to(secrets_dir / GLOBEX / "token")

    await assert_refused(
        client,
        ACME,
        entry({"secret": {"file": "theirs"}}),
        "file:theirs is refused: leads out of the tenant's secrets directory",
    )


async def test_tls_files_are_confined_too(client: httpx.AsyncClient) -> None:
    body = {"base_url": "https://shop.example.com", "tls": {"client_key": "/etc/ssl/private/k"}}

    await assert_refused(client, ACME, body, "tls.client_key: file:/etc/ssl/private/k is refused")


@pytest.mark.parametrize("name", ["Authorization", "Cookie", "X-Auth-Token", "X-Api-Key"])
async def test_a_literal_credential_is_refused_and_never_echoed(
    client: httpx.AsyncClient, name: str
) -> None:
    body = {"base_url": "https://shop.example.com", "headers": {name: "Bearer xyz-literal"}}

    detail = await assert_refused(
        client, ACME, body, f"headers.{name}: header {name!r} carries a credential", '"secret"'
    )

    assert "xyz-literal" not in detail


async def test_a_refused_replacement_keeps_the_stored_entry(client: httpx.AsyncClient) -> None:
    good = entry({"secret": {"file": "token"}})
    assert (await client.put(f"{BASE}/shop", json=good, headers=admin(ACME))).status_code == 201

    bad = entry({"secret": {"env": "JWT_SECRET"}})
    refused = await client.put(f"{BASE}/shop", json=bad, headers=admin(ACME))

    assert refused.status_code == 422
    shown = (await client.get(f"{BASE}/shop", headers=admin(ACME))).json()
    assert shown["version"] == 1
    assert shown["service"]["headers"]["X-Shop-Key"]["secret"]["file"] == "token"


async def test_a_literal_credential_stored_under_older_rules_is_not_shown(
    served: tuple[Orchestrator, httpx.AsyncClient],
) -> None:
    node, client = served
    legacy = {"base_url": "https://shop.example.com", "headers": {"Authorization": "xyz-old"}}
    await node.store.put_participant(ACME, "shop", legacy, None)

    shown = await client.get(f"{BASE}/shop", headers=admin(ACME))
    listed = await client.get(BASE, headers=admin(ACME))

    assert shown.json()["service"]["headers"] == {"Authorization": "[redacted]"}
    assert "xyz-old" not in shown.text + listed.text


async def run_charge(
    store_url: str, secrets: SecretPolicy, service: dict[str, Any] | None
) -> InstanceView:
    """On a node with ``secrets``: register ``service`` (unless None) and the saga, then run
    the saga to its end."""
    node, app = open_node(store_url, secrets)
    async with node, app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://saga.test", headers=admin(ACME)
        ) as api:
            if service is not None:
                put = await api.put(f"{BASE}/shop", json=service)
                assert put.status_code == 201, put.text
                defined = await api.post("/api/v1/sagas/definitions", json=SAGA)
                assert defined.status_code == 201, defined.text
            started = await api.post(
                "/api/v1/sagas/instances", json={"saga_name": "charge", "context": {}}
            )
            assert started.status_code == 201, started.text
            return await node.wait(started.json()["id"], timeout=10)


async def test_a_call_sends_the_tenants_file_secret_and_not_once_the_settings_change(
    store_url: str, secrets_dir: Path
) -> None:
    """Registered on a node with SECRETS_DIR; then the node restarts without it: the
    reference registered earlier is refused at call time and nothing is sent."""
    async with StubParticipant() as stub:
        service = {
            "base_url": stub.base_url,
            "allow_private_network": True,
            "headers": {"Authorization": {"secret": {"file": "token"}, "prefix": "Bearer "}},
        }
        sent = await run_charge(store_url, SecretPolicy.of([ACME], secrets_dir), service)
        refused = await run_charge(store_url, SecretPolicy.of([ACME]), None)

    assert sent.status is InstanceStatus.COMPLETED
    assert [call.headers["authorization"] for call in stub.calls] == ["Bearer acme-file-secret"]
    assert refused.status is InstanceStatus.COMPENSATED  # nothing to undo
    error = refused.steps["charge"].error
    assert error is not None
    assert (error.type, error.retryable) == ("SecretRefused", False)
    assert error.message.startswith("secret file:token is refused: file references are disabled")
