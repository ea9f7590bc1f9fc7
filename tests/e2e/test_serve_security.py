"""``saga serve`` as a real process: authentication that cannot be silently off, HTTPS, and a
participant's secret that never shows anywhere the run leaves a trace."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.credentials import AUTH, SERVER_ENV
from tests.support.stub_participant import Reply, StubParticipant

ROOT = Path(__file__).parents[2]
SAGA = [sys.executable, "-m", "saga_orchestrator.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(
    tmp_path: Path, *args: str, env: dict[str, str], scheme: str = "http", verify: object = True
) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    port = free_port()
    log = tmp_path / "serve.log"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JWT_")},
        "DATABASE_URL": f"sqlite:///{tmp_path / 'saga.db'}",
        "TOKEN_FILE": str(tmp_path / ".saga-token"),
        **env,
    }
    with log.open("w") as out:
        process = subprocess.Popen(
            [*SAGA, "serve", "--port", str(port), *args],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = f"{scheme}://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/ready", verify=verify).status_code == 200:  # type: ignore[arg-type]
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "saga serve did not come up"
                time.sleep(0.2)
            yield url, process, log
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def test_without_a_key_it_makes_one_listens_on_loopback_and_prints_an_admin_token(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / ".saga-token"
    with serving(tmp_path, env={}) as (url, _process, log):
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token in log.read_text()  # printed for the newcomer, like Jupyter's
        anonymous = httpx.get(f"{url}/api/v1/sagas/instances")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        allowed = httpx.get(
            f"{url}/api/v1/sagas/instances", headers={"Authorization": f"Bearer {token}"}
        )
        assert allowed.status_code == 200
    assert not token_file.exists()  # the token died with the run's key


def test_metrics_for_the_newcomers_token_and_for_a_scraper(tmp_path: Path) -> None:
    """Without a key, the printed admin token reads its tenant's metrics; METRICS_TOKEN is
    the scraper's, good on /metrics only."""
    scrape = secrets.token_urlsafe(48)
    with serving(tmp_path, env={"METRICS_TOKEN": scrape}) as (url, _process, log):
        admin = {"Authorization": f"Bearer {(tmp_path / '.saga-token').read_text().strip()}"}
        scraper = {"Authorization": f"Bearer {scrape}"}
        httpx.get(f"{url}/api/v1/sagas/instances", headers=admin)
        own = httpx.get(f"{url}/metrics", headers=admin)
        assert own.status_code == 200
        assert 'route="/api/v1/sagas/instances"' in own.text
        every = httpx.get(f"{url}/metrics", headers=scraper)
        assert every.status_code == 200
        assert 'route="/api/v1/sagas/instances"' in every.text
        assert httpx.get(f"{url}/api/v1/sagas/instances", headers=scraper).status_code == 401
        assert "METRICS_TOKEN" in log.read_text()  # the banner says how to scrape
        assert scrape not in log.read_text()


def test_a_weak_metrics_token_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SAGA, "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={**os.environ, **SERVER_ENV, "METRICS_TOKEN": "prometheus" * 4},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "METRICS_TOKEN: too predictable" in result.stderr
    assert "prometheus" not in result.stderr


def test_without_a_key_it_refuses_a_public_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SAGA, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=ROOT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("JWT_")},
            "DATABASE_URL": f"sqlite:///{tmp_path / 'saga.db'}",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in result.stderr


def test_without_a_key_it_refuses_an_inherited_public_socket(tmp_path: Path) -> None:
    """A worker serves the socket its supervisor bound (LISTEN_FD): the address checked is
    that socket's, whatever --host says."""
    with socket.create_server(("0.0.0.0", 0)) as public:
        public.set_inheritable(True)
        result = subprocess.run(
            [*SAGA, "serve", "--host", "127.0.0.1", "--port", str(public.getsockname()[1])],
            cwd=ROOT,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("JWT_")},
                "DATABASE_URL": f"sqlite:///{tmp_path / 'saga.db'}",
                "LISTEN_FD": str(public.fileno()),
            },
            pass_fds=(public.fileno(),),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert "refusing to serve on 0.0.0.0 without authentication" in result.stderr


def test_a_weak_secret_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SAGA, "serve", "--port", str(free_port())],
        cwd=ROOT,
        env={**os.environ, "JWT_SECRET": "changeme" * 4},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "changeme" not in result.stderr  # the secret is not echoed


def test_https_with_a_certificate(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    args = ("--tls-cert", str(cert), "--tls-key", str(key))
    trusted = ssl.create_default_context(cafile=str(cert))
    with serving(tmp_path, *args, env=SERVER_ENV, scheme="https", verify=trusted) as served:
        url = served[0]
        answer = httpx.get(f"{url}/api/v1/sagas/instances", headers=AUTH, verify=trusted)
        assert answer.status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https", "http") + "/health", timeout=5)


def stored_bytes(directory: Path) -> list[str]:
    """The database files as text (the WAL too): what a dump of the store would show."""
    return [path.read_bytes().decode("latin-1") for path in directory.glob("saga.db*")]


async def test_a_participant_secret_never_shows(tmp_path: Path) -> None:
    """One secret is in the node's environment only, another in a file of the tenant's
    secrets directory; the participant echoes the headers it gets back in its errors; every
    answer, event, log line and error of the run is searched."""
    secret = "s3cr3t-" + secrets.token_hex(16)
    file_secret = "f1le-" + secrets.token_hex(16)
    secrets_dir = tmp_path / "secrets"
    (secrets_dir / "default").mkdir(parents=True)  # the node's (and the token's) tenant
    (secrets_dir / "default" / "shop-key").write_text(file_secret + "\n")
    async with StubParticipant() as stub:
        env = {**SERVER_ENV, "SAGA_SECRET_SHOP": secret, "SECRETS_DIR": str(secrets_dir)}
        with serving(tmp_path, env=env) as (url, _process, log):
            async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=10) as api:
                seen: list[str] = []

                async def call(method: str, path: str, **kwargs: object) -> httpx.Response:
                    answer = await api.request(method, path, **kwargs)  # type: ignore[arg-type]
                    seen.append(answer.text)
                    return answer

                service = {
                    "base_url": stub.base_url,
                    "allow_private_network": True,
                    "headers": {
                        "Authorization": {"secret": {"env": "SAGA_SECRET_SHOP"}},
                        "X-Shop-Key": {"secret": {"file": "shop-key"}},
                    },
                }
                put = await call("PUT", "/api/v1/participants/shop", json=service)
                assert put.status_code == 201, put.text
                definition = {
                    "name": "leaky",
                    "version": "1.0.0",
                    "steps": [
                        {
                            "name": "charge",
                            "retry": {"max_attempts": 2, "initial_interval": 0.01},
                            "action": {"http": {"service": "shop", "path": "/charge"}},
                        }
                    ],
                }
                await call("POST", "/api/v1/sagas/definitions", json=definition)
                # The participant echoes the credential it received in its error answers.
                stub.script(
                    "/charge",
                    Reply(status=500, json={"detail": f"you sent {secret} {file_secret}"}),
                )
                stub.set_default(
                    Reply(status=400, json={"title": f"bad key {file_secret} {secret}"}),
                    path="/charge",
                )
                started = await call(
                    "POST", "/api/v1/sagas/instances", json={"saga_name": "leaky", "context": {}}
                )
                instance = started.json()["id"]
                async with asyncio.timeout(30):
                    while True:
                        detail = await call("GET", f"/api/v1/sagas/instances/{instance}")
                        if detail.json()["status"] in ("compensated", "completed", "failed"):
                            break
                        await asyncio.sleep(0.1)
                await call("GET", f"/api/v1/sagas/instances/{instance}/events")
                await call("GET", "/api/v1/participants/shop")
                await call("GET", "/api/v1/audit")
                metrics = await call("GET", "/metrics")
                assert metrics.status_code == 200
        # The participant did get it: the test is not vacuous.
        assert stub.calls and stub.calls[0].headers["authorization"] == secret
        assert stub.calls[0].headers["x-shop-key"] == file_secret
    stored = stored_bytes(tmp_path)
    produced = [*seen, log.read_text(), *stored]
    assert len(stored) >= 1
    for text in produced:
        assert secret not in text
        assert file_secret not in text
