"""The client commands (``saga definitions …``, ``saga instances …``) against a real
``saga serve`` process, each run as its own process like a person or a script would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.credentials import AUTH, CLIENT_ENV, SERVER_ENV

ROOT = Path(__file__).parents[2]
ORDER = ROOT / "examples" / "tour" / "order.json"
SAGA = [sys.executable, "-m", "saga_orchestrator.cli"]
TIMEOUT = 60
TERMINAL = {"completed", "compensated", "failed", "cancelled", "timed_out"}

# Ten half-second steps: long enough to cancel mid-flight from a fresh process.
SLOW_STEPS = 10
SLOW_YAML = "name: slow-order\nversion: 1.0.0\nsteps:\n" + "".join(
    f"  - name: step{n}\n    action: inventory.reserve\n    compensation: inventory.release\n"
    for n in range(SLOW_STEPS)
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("serve")
    port = free_port()
    log_path = directory / "serve.log"
    log = log_path.open("w")
    command = [*SAGA, "serve", "--handlers", "examples.tour.shop", "--port", str(port)]
    env = {**os.environ, **SERVER_ENV, "DATABASE_URL": f"sqlite:///{directory / 'client.db'}"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "saga serve did not come up"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        code = process.wait(timeout=30)
        log.close()
    assert code == 0, log_path.read_text()


def saga(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SAGA_URL"} | CLIENT_ENV
    env["COLUMNS"] = "200"
    if url is not None:
        env["SAGA_URL"] = url
    return subprocess.run(
        [*SAGA, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return orjson.loads(ok(result))


def wait_for_end(url: str, instance_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        detail: dict[str, Any] = httpx.get(
            f"{url}/api/v1/sagas/instances/{instance_id}", headers=AUTH
        ).json()
        if detail["status"] in TERMINAL:
            return detail
        assert time.monotonic() < deadline, f"{instance_id} still {detail['status']}"
        time.sleep(0.2)


def start(url: str, saga_name: str, context: dict[str, Any]) -> str:
    started = as_json(
        saga(
            "instances",
            "start",
            saga_name,
            "--context",
            orjson.dumps(context).decode(),
            "--output",
            "json",
            url=url,
        )
    )
    assert started["saga_name"] == saga_name
    instance_id: str = started["id"]
    return instance_id


# --- definitions ------------------------------------------------------------------------------


def test_apply_creates_then_reports_identical(server: str) -> None:
    first = ok(saga("definitions", "apply", str(ORDER), "--url", server))
    assert first.strip() == f"{ORDER}: order 1.0.0 created"
    again = ok(saga("definitions", "apply", str(ORDER), "--url", server))
    assert again.strip() == f"{ORDER}: order 1.0.0 identical"


def test_apply_stops_at_the_first_invalid_file_with_its_violations(
    server: str, tmp_path: Path
) -> None:
    invalid = tmp_path / "invalid.json"
    invalid.write_bytes(
        orjson.dumps(
            {
                "name": "twice",
                "version": "1.0.0",
                "steps": [{"name": "a", "action": "x.y"}, {"name": "a", "action": "x.z"}],
            }
        )
    )
    later = tmp_path / "later.json"
    later.write_bytes(
        orjson.dumps({"name": "later", "version": "1.0.0", "steps": [{"name": "a", "action": "b"}]})
    )
    result = saga("definitions", "apply", str(invalid), str(later), "--url", server)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"error: {invalid}: invalid definition"
    assert any("steps[1]" in line and "[unique-names]" in line for line in lines[1:])
    names = {d["name"] for d in as_json(saga("definitions", "list", "-o", "json", url=server))}
    assert "later" not in names  # the files after the invalid one were not applied


def test_apply_reads_yaml_and_reports_json_for_scripts(server: str, tmp_path: Path) -> None:
    slow = tmp_path / "slow.yaml"
    slow.write_text(SLOW_YAML, encoding="utf-8")
    applied = as_json(saga("definitions", "apply", str(slow), "--output", "json", url=server))
    assert [(a["file"], a["name"], a["status"]) for a in applied] == [
        (str(slow), "slow-order", "created")
    ]


def test_definitions_list_as_a_table_and_json_with_a_prefix(server: str) -> None:
    ok(saga("definitions", "apply", str(ORDER), url=server))
    table = ok(saga("definitions", "list", url=server))
    assert "order" in table
    assert "1.0.0" in table
    assert "Reserve stock, charge the customer" in table
    listed = as_json(saga("definitions", "list", "--prefix", "ord", "-o", "json", url=server))
    assert [d["name"] for d in listed] == ["order"]


# --- instances --------------------------------------------------------------------------------


def test_start_show_and_events_of_a_completed_saga(server: str) -> None:
    ok(saga("definitions", "apply", str(ORDER), url=server))
    instance_id = start(server, "order", {"sku": "A1", "address": "home"})
    assert wait_for_end(server, instance_id)["status"] == "completed"

    shown = ok(saga("instances", "show", instance_id, url=server))
    for step in ("reserve", "charge", "ship"):
        assert step in shown
    assert instance_id in shown
    assert "status: completed" in shown

    events = as_json(saga("instances", "events", instance_id, "--output", "json", url=server))
    assert isinstance(events, list)
    assert events[0]["type"] == "SagaStarted"
    assert events[-1]["type"] == "SagaCompleted"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert "AttemptSucceeded" in ok(saga("instances", "events", instance_id, url=server))

    page = as_json(
        saga(
            "instances",
            "list",
            "--status",
            "completed",
            "--saga",
            "order",
            "-o",
            "json",
            url=server,
        )
    )
    assert instance_id in [item["id"] for item in page["items"]]
    assert instance_id in ok(saga("instances", "list", "--limit", "50", url=server))


def test_list_pages_with_the_cursor(server: str) -> None:
    ok(saga("definitions", "apply", str(ORDER), url=server))
    for sku in ("P1", "P2"):
        start(server, "order", {"sku": sku, "address": "home"})
    first = as_json(saga("instances", "list", "--limit", "1", "-o", "json", url=server))
    assert len(first["items"]) == 1
    assert first["next_cursor"]
    second = as_json(
        saga(
            "instances",
            "list",
            "--limit",
            "1",
            "--cursor",
            first["next_cursor"],
            "-o",
            "json",
            url=server,
        )
    )
    assert second["items"][0]["id"] != first["items"][0]["id"]


def test_cancel_a_running_saga_with_a_reason(server: str, tmp_path: Path) -> None:
    slow = tmp_path / "slow.yaml"
    slow.write_text(SLOW_YAML, encoding="utf-8")
    ok(saga("definitions", "apply", str(slow), url=server))
    instance_id = start(server, "slow-order", {"sku": "S1", "address": "home"})

    cancelled = ok(
        saga("instances", "cancel", instance_id, "--reason", "customer asked", url=server)
    )
    assert cancelled.startswith(f"cancel requested: {instance_id} · status: ")
    assert wait_for_end(server, instance_id)["status"] == "cancelled"

    events = as_json(saga("instances", "events", instance_id, "-o", "json", url=server))
    requested = [e for e in events if e["type"] == "CancelRequested"]
    assert len(requested) == 1
    assert "customer asked" in orjson.dumps(requested[0]["data"]).decode()
    assert "status: cancelled" in ok(saga("instances", "show", instance_id, url=server))


def test_retry_of_an_instance_that_is_not_parked_fails_with_the_servers_detail(
    server: str,
) -> None:
    ok(saga("definitions", "apply", str(ORDER), url=server))
    instance_id = start(server, "order", {"sku": "R1", "address": "nowhere"})
    assert wait_for_end(server, instance_id)["status"] == "compensated"
    problem = httpx.post(
        f"{server}/api/v1/sagas/instances/{instance_id}/retry",
        json={"reason": "probe"},
        headers=AUTH,
    )
    assert problem.status_code == 409

    result = saga("instances", "retry", instance_id, "--reason", "try again", url=server)
    assert result.returncode == 1
    assert result.stdout == ""
    expected = f"error: {problem.json()['detail']} (409 Not allowed now)"
    assert result.stderr.strip().splitlines() == [expected]


def test_errors_of_the_server_are_one_line(server: str) -> None:
    missing = saga("instances", "show", "00000000-0000-0000-0000-000000000000", url=server)
    assert missing.returncode == 1
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "404" in missing.stderr

    ok(saga("definitions", "apply", str(ORDER), url=server))
    invalid = saga("instances", "start", "order", "--context", '{"sku": 1}', url=server)
    assert invalid.returncode == 1
    assert "input schema" in invalid.stderr
    assert len(invalid.stderr.strip().splitlines()) == 1


def test_a_context_that_is_not_json_is_a_usage_error(server: str) -> None:
    result = saga("instances", "start", "order", "--context", "{not json", url=server)
    assert result.returncode == 2
    assert "--context" in result.stderr


def test_an_unreachable_server_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = saga("instances", "list", "--url", url)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach {url}: connection refused — is `saga serve` running?"
    ]


def test_participants_put_list_show_and_delete(server: str, tmp_path: Path) -> None:
    settings = tmp_path / "inventory.yaml"
    settings.write_text(
        "base_url: https://inventory.example.com/v1\n"
        "headers:\n  Authorization: {secret: {env: SAGA_SECRET_INVENTORY}, prefix: 'Bearer '}\n"
    )
    put = saga("participants", "put", "inventory", str(settings), url=server)
    assert put.returncode == 0, put.stderr
    assert "inventory: version 1" in put.stdout
    listed = saga("participants", "list", url=server)
    assert listed.returncode == 0, listed.stderr
    assert "inventory" in listed.stdout
    assert "https://inventory.example.com/v1" in listed.stdout
    shown = saga("participants", "show", "inventory", url=server)
    entry = orjson.loads(shown.stdout)
    assert entry["service"]["headers"]["Authorization"]["secret"]["env"] == "SAGA_SECRET_INVENTORY"
    as_json = saga("participants", "list", "-o", "json", url=server)
    assert [p["name"] for p in orjson.loads(as_json.stdout)] == ["inventory"]
    deleted = saga("participants", "delete", "inventory", url=server)
    assert deleted.returncode == 0, deleted.stderr
    gone = saga("participants", "show", "inventory", url=server)
    assert gone.returncode == 1
    assert "inventory" in gone.stderr


def test_participants_refuse_a_loopback_service_in_one_line(server: str, tmp_path: Path) -> None:
    settings = tmp_path / "local.json"
    settings.write_text('{"base_url": "http://127.0.0.1:9"}')
    refused = saga("participants", "put", "local", str(settings), url=server)
    assert refused.returncode == 1
    assert "allow_private_network" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_cluster_status_lists_this_node_as_leader(server: str) -> None:
    shown = ok(saga("cluster", "status", url=server))
    assert "(this)" in shown
    assert "yes" in shown  # the only node leads
    listed = as_json(saga("cluster", "status", "-o", "json", url=server))
    assert [node["leader"] for node in listed["items"]] == [True]


def test_limits_set_show_and_reset(server: str) -> None:
    saved = as_json(
        saga(
            "limits", "set", "--starts-per-second", "20", "--max-running-sagas", "40",
            "-o", "json", url=server,
        )
    )  # fmt: skip
    assert (saved["version"], saved["limits"]["max_running_sagas"]) == (1, 40)
    assert saved["applied"]["starts"] == {"per_second": 20.0, "burst": 40}
    shown = ok(saga("limits", "show", url=server))
    assert "Limits of tenant default (version 1)" in shown
    rows = {line.strip().split("  ")[0]: line.split() for line in shown.splitlines()}
    # own, applied, and the ceiling: RATE_LIMIT_STARTS of the server, as no ceiling is set
    assert rows["starts per second"][-7:] == [
        "20.0", "20.0", "(burst", "40)", "100000.0", "(burst", "200000)"
    ]  # fmt: skip
    assert rows["max running sagas"][-3:] == ["40", "40", "none"]
    refused = saga("limits", "set", "--requests-per-second", "0", url=server)
    assert refused.returncode == 1
    assert "requests.per_second" in refused.stderr
    assert "Traceback" not in refused.stderr
    # saga serve builds the ceilings from its settings: by default, its default limits.
    above = saga("limits", "set", "--requests-per-second", "100001", url=server)
    assert above.returncode == 1
    assert (
        "body.requests.per_second: 100001 is above the ceiling of 100000 set by the node's "
        "operator" in " ".join(above.stderr.split())
    )
    assert as_json(saga("limits", "show", "-o", "json", url=server))["version"] == 1
    usage = saga("limits", "set", "--starts-burst", "3", url=server)
    assert usage.returncode == 2
    assert "--starts-per-second" in usage.stderr
    assert "limits reset" in ok(saga("limits", "reset", url=server))
    assert as_json(saga("limits", "show", "-o", "json", url=server))["version"] is None
