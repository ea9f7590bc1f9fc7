"""The ``saga`` command as a newcomer runs it: a real process in an empty working directory."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from saga_orchestrator.settings import mask_password
from tests.support.pg_logins import MakeLogin, make_login, own_logins

SETTINGS_VARIABLES = (
    "DATABASE_URL",
    "DATABASE_APP_URL",
    "DATABASE_CLUSTER_URL",
    "MAX_CONCURRENT_SAGAS",
    "LOG_LEVEL",
    "TENANT_ID",
)
SAGA = [sys.executable, "-m", "saga_orchestrator.cli"]
TIMEOUT = 120
__all__ = ["make_login", "own_logins"]  # fixtures, used by name


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without settings, a wide terminal, and ``variables``."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in SETTINGS_VARIABLES}
    return {**env, "COLUMNS": "200", **variables}


def saga(cwd: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SAGA, *args],
        cwd=cwd,
        env=environment(**variables),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_migrate_creates_the_embedded_database_in_the_working_directory(tmp_path: Path) -> None:
    result = saga(tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"schema version [1-9]\d* \(sqlite:///saga\.db\)\n", result.stdout)
    assert (tmp_path / "saga.db").is_file()
    again = saga(tmp_path, "migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout == result.stdout


def test_migrate_takes_the_url_from_the_option(tmp_path: Path) -> None:
    result = saga(tmp_path, "migrate", "--database-url", "sqlite:///other.db")
    assert result.returncode == 0, result.stderr
    assert "(sqlite:///other.db)" in result.stdout
    assert (tmp_path / "other.db").is_file()
    assert not (tmp_path / "saga.db").exists()


def test_invalid_settings_exit_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    result = saga(tmp_path, "migrate", MAX_CONCURRENT_SAGAS="-3")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "MAX_CONCURRENT_SAGAS: must be greater than 0 (got -3)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "saga.db").exists()


def test_an_unsupported_database_url_is_a_configuration_error(tmp_path: Path) -> None:
    result = saga(tmp_path, "migrate", DATABASE_URL="mysql://root:hunter2@db/saga")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "unsupported database URL scheme 'mysql'" in result.stderr
    assert "hunter2" not in result.stderr


def test_an_unreachable_database_exits_1_with_one_line(tmp_path: Path) -> None:
    url = "postgresql://saga:hunter2@127.0.0.1:1/saga"
    result = saga(tmp_path, "migrate", "--database-url", url)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


@pytest.mark.postgres
async def test_migrate_on_postgresql_prints_the_schema_version(pg_empty_url: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *SAGA,
        "migrate",
        "--database-url",
        pg_empty_url,
        env=environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode == 0, stderr.decode()
    assert re.fullmatch(r"schema version [1-9]\d* \((.+)\)\n", stdout.decode())
    assert f"({mask_password(pg_empty_url)})" in stdout.decode()


async def _saga_async(*args: str, **variables: str) -> tuple[int | None, str, str]:
    """``saga`` as a child of the running loop (for tests whose fixtures are async)."""
    process = await asyncio.create_subprocess_exec(
        *SAGA,
        *args,
        env=environment(**variables),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.postgres
async def test_audit_verify_reads_through_the_pools_own_logins(
    pg_url: str, make_login: MakeLogin, own_logins: tuple[str, str]
) -> None:
    app_url, cluster_url = own_logins
    code, stdout, stderr = await _saga_async(
        "audit",
        "verify",
        DATABASE_URL=pg_url,
        DATABASE_APP_URL=app_url,
        DATABASE_CLUSTER_URL=cluster_url,
    )
    assert (code, stdout) == (0, "no audit records\n"), stderr
    assert "can leave the role" not in stderr  # both logins were taken
    both = await make_login("IN ROLE saga_app, saga_cluster")
    code, stdout, stderr = await _saga_async(
        "audit",
        "verify",
        DATABASE_URL=pg_url,
        DATABASE_APP_URL=both,
        DATABASE_CLUSTER_URL=cluster_url,
    )
    assert code == 2
    assert stderr.startswith("configuration error: DATABASE_APP_URL: ")
    assert "can SET ROLE saga_cluster" in stderr


def test_demo_shows_a_completed_and_a_compensated_instance(tmp_path: Path) -> None:
    result = saga(tmp_path, "demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert (tmp_path / "saga.db").is_file(), "the demo runs on the embedded default"
    assert len(re.findall(r"order 1\.0\.0-demo · [0-9a-f-]{36}", out)) == 2
    statuses = [line.strip() for line in lines if line.startswith("status: ")]
    assert statuses == ["status: completed", "status: compensated"]

    def row(node: str, event: str) -> int:
        """Index of the compensation row of ``node`` with ``event``."""
        found = [
            i
            for i, line in enumerate(lines)
            if line.split()[1:5] == [node, "compensation", "1", event]
        ]
        assert len(found) == 1, f"no single {node} {event} row in:\n{out}"
        return found[0]

    refund, release = row("charge", "compensated"), row("reserve", "compensated")
    assert refund < release, "compensations run in reverse order"
    assert "ShippingRejected" in out
    assert not any(line.split()[1:3] == ["ship", "compensation"] for line in lines)
    assert result.stderr == ""


def test_version(tmp_path: Path) -> None:
    result = saga(tmp_path, "version")
    assert result.returncode == 0
    assert re.fullmatch(r"saga-orchestrator \d+\.\d+\.\d+\S*\n", result.stdout)


def test_the_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "saga"
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}: the project is not installed")
    result = subprocess.run(
        [str(script), "--help"],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in ("migrate", "demo", "version"):
        assert command in result.stdout
