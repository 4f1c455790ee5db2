"""The benchmark script still runs (tiny numbers); it measures nothing here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench.py",
            "--quick",
            "--only",
            "throughput,limits,critical_path,group_commit,recovery",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(out.read_text())
    assert {"throughput", "limits", "critical_path", "group_commit", "recovery"} <= set(results)
    assert all(run["failed"] == 0 for run in results["throughput"].values())
    assert results["limits"]["messages_per_order"] > 0
