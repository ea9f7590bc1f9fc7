"""The README's tour, command for command, against a real ``saga serve`` process."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
SERVE_LINE = "saga serve --handlers examples.tour.shop &"


def tour_commands() -> list[str]:
    section = README.read_text(encoding="utf-8").split("## A five-minute tour", 1)[1]
    block = re.search(r"^```bash\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert block is not None, "the tour has a bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    command = [sys.executable, "-m", "saga_orchestrator.cli", "serve"]
    args = ["--handlers", "examples.tour.shop", "--port", str(port)]
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'tour.db'}",
        "TOKEN_FILE": str(tmp_path / ".saga-token"),  # not in the repository's directory
    }
    process = subprocess.Popen([*command, *args], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "saga serve did not come up"
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        code = process.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()  # SIGTERM is a graceful stop


def test_the_readme_tour_shows_a_compensation_live(server: int, tmp_path: Path) -> None:
    commands = tour_commands()
    assert commands[0] == SERVE_LINE
    script = (
        "\n".join(["set -euo pipefail", *commands[1:]])
        .replace("127.0.0.1:8000", f"127.0.0.1:{server}")
        .replace("cat .saga-token", f"cat {tmp_path / '.saga-token'}")
    )
    result = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    events = re.findall(r"^event: (\w+)$", result.stdout, flags=re.MULTILINE)
    assert events[-1] == "SagaCompensated"
    assert "StepFailed" in events
    records = [
        orjson.loads(line[len("data: ") :])
        for line in result.stdout.splitlines()
        if line.startswith("data: ")
    ]
    compensations = [
        r["data"]["node"]
        for r in records
        if r["type"] == "AttemptScheduled" and r["data"]["phase"] == "compensation"
    ]
    assert compensations == ["charge", "reserve"]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    instance = orjson.loads(result.stdout.strip().splitlines()[-1])
    assert instance["status"] == "compensated"
