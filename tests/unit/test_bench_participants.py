"""Smoke test of ``bench/participants_bench.py``: its main path, small, on SQLite, with the real
no-op participant process; it must finish with exit 0 and report an http/in-process ratio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "participants_bench.py"


def test_the_participants_benchmark_runs_and_reports_a_ratio(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [sys.executable, str(BENCH), "--backend=sqlite", "--sagas=20", "--concurrency=5"]
    command += ["--warmup=5", "--scenario=both", f"--json={out}"]

    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["failures"] == []
    rows = {(r["transport"], r["scenario"]): r for r in report["results"]}
    assert set(rows) == {("inproc", "A"), ("http", "A"), ("inproc", "B"), ("http", "B")}
    assert rows[("http", "A")]["detail"]["routes"] == {
        "POST /reserve": 20,
        "POST /charge": 20,
        "POST /ship": 20,
    }
    assert all(r["sagas_per_s"] > 0 for r in report["results"])
    ratios = {r["scenario"]: r["http_over_inproc"] for r in report["ratios"]}
    assert set(ratios) == {"A", "B"}
    assert all(ratio > 0 for ratio in ratios.values())
    assert "http/inproc" in completed.stdout
