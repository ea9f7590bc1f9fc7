"""``bench/tenant_isolation_bench.py`` with ``--workers``: the node's CPU is its whole process
tree (``saga serve --workers`` forks its workers), and a cluster of workers needs
PostgreSQL. Real processes, read from ``/proc``; nothing is timed."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from tenant_isolation_bench import parser
from tenant_isolation_node import process_cpu, tree_cpu

BURN_SECONDS = 0.3
# The child burns CPU, then sleeps; its parent only waits for it.
PARENT = f"""
import subprocess, sys
child = (
    "import time\\n"
    "began = time.process_time()\\n"
    "while time.process_time() - began < {BURN_SECONDS}:\\n"
    "    pass\\n"
    "print('burnt', flush=True)\\n"
    "time.sleep(60)\\n"
)
subprocess.run([sys.executable, "-c", child])
"""

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@pytest.fixture
def parent_of_a_busy_child() -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "burnt"
            yield process
        finally:
            subprocess.run(["pkill", "-KILL", "-s", str(process.pid)], check=False)
            process.wait(timeout=30)


def test_the_node_s_cpu_counts_its_workers(
    parent_of_a_busy_child: subprocess.Popen[str],
) -> None:
    pid = parent_of_a_busy_child.pid
    own = process_cpu(pid)
    whole = tree_cpu(pid)
    assert own < BURN_SECONDS / 2  # the parent itself only started the child and waits
    assert whole - own >= BURN_SECONDS * 0.8


def test_a_process_that_ended_has_no_figure() -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as ended:
        ended.wait()  # reaped: /proc no longer holds it
    assert math.isnan(tree_cpu(ended.pid))


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--workers", "2"], "needs --database-url"),
        (
            ["--workers", "2", "--database-url", "postgresql://x/y", "--profile-node", "p.html"],
            "profiles one process",
        ),
    ],
)
def test_workers_need_postgresql_and_no_profiler(
    argv: list[str], error: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tenant_isolation_bench import main

    monkeypatch.setattr(sys, "argv", ["tenant_isolation_bench.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err


def test_one_worker_is_the_default() -> None:
    assert parser().parse_args([]).workers == 1
