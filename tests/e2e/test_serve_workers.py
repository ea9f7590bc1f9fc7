"""``saga serve --workers N``: N cluster nodes in N processes behind one port, stopped together
by one SIGTERM; refused where it cannot work (SQLite, no shared key)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.credentials import AUTH, SERVER_ENV
from tests.e2e.test_serve_security import free_port
from tests.e2e.test_service import ORDER

ROOT = Path(__file__).parents[2]
SAGA = [sys.executable, "-m", "saga_orchestrator.cli"]
TERMINAL = {"completed", "compensated", "cancelled", "timed_out", "failed"}


def _env(**extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "CLUSTER"))}
    return {**inherited, **extra}


@pytest.mark.postgres
def test_workers_share_the_port_and_the_work_and_stop_together(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = _env(
        **SERVER_ENV,
        DATABASE_URL=pg_url,
        CLUSTER_ENABLED="true",
        NODE_ID="box",
        LEASE_TTL="5",
    )
    with log.open("w") as out:
        supervisor = subprocess.Popen(
            [*SAGA, "serve", "--port", str(port), "--workers", "2", "--grace", "2",
             "--handlers", "tests.e2e.service_handlers"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as client:
            nodes = _until_nodes(client, supervisor, log, expected={"box-w0", "box-w1"})
            assert {n["id"] for n in nodes} == {"box-w0", "box-w1"}
            workers = _children(supervisor.pid)
            assert len(workers) == 2

            registered = client.post("/api/v1/sagas/definitions", json=ORDER)
            assert registered.status_code in (200, 201), registered.text
            ids = [
                client.post(
                    "/api/v1/sagas/instances", json={"saga_name": ORDER["name"], "context": {}}
                ).json()["id"]
                for _ in range(40)
            ]
            assert len(set(ids)) == 40
            assert [_final_status(client, i) for i in ids] == ["completed"] * 40
        # Each new connection goes to whichever worker accepts it: both answer in turn.
        answered = {_answering_node(port) for _ in range(40)}
        assert answered == {"box-w0", "box-w1"}
    finally:
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(timeout=60)
    assert code == 0, log.read_text()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_workers_are_refused_on_sqlite(tmp_path: Path) -> None:
    result = subprocess.run(
        [*SAGA, "serve", "--port", str(free_port()), "--workers", "2"],
        cwd=ROOT,
        env=_env(**SERVER_ENV, DATABASE_URL=f"sqlite:///{tmp_path / 'saga.db'}"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CLUSTER_ENABLED" in result.stderr


def _until_nodes(
    client: httpx.Client,
    process: subprocess.Popen[bytes],
    log: Path,
    expected: set[str],
) -> list[dict[str, object]]:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the workers did not come up: " + log.read_text()
        try:
            answer = client.get("/api/v1/cluster/nodes")
        except httpx.TransportError:
            answer = None
        if answer is not None and answer.status_code == 200:
            items: list[dict[str, object]] = answer.json()["items"]
            if {item["id"] for item in items} >= expected:
                return items
        time.sleep(0.2)


def _answering_node(port: int) -> str:
    listed = httpx.get(f"http://127.0.0.1:{port}/api/v1/cluster/nodes", headers=AUTH).json()
    return next(str(node["id"]) for node in listed["items"] if node["this_node"])


def _final_status(client: httpx.Client, instance_id: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        status = client.get(f"/api/v1/sagas/instances/{instance_id}").json()["status"]
        if status in TERMINAL or time.monotonic() > deadline:
            return str(status)
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc: the fourth field of stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
