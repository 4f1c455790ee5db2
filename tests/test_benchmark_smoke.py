"""The benchmark script still runs (tiny numbers); it measures nothing here."""

from __future__ import annotations

import importlib.util
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
            "throughput,limits,critical_path,services,group_commit,recovery",
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
    assert {"throughput", "limits", "critical_path", "services", "group_commit", "recovery"} <= set(results)
    assert all(run["failed"] == 0 for run in results["throughput"].values())
    assert results["limits"]["messages_per_order"] > 0
    # in-process and against the two service processes, in the one run, as rows with no target
    if importlib.util.find_spec("aiohttp") is None:
        assert results["services"] == {"skipped": "aiohttp is not installed"}
        return
    services = results["services"]
    for where in ("in_process", "processes"):
        assert services[where]["clients_64"]["failed"] == services[where]["one_client"]["failed"] == 0
        assert services[where]["clients_64"]["orders_per_s"] > 0
    assert services["processes"]["clients_64"]["services_cpu_ms_per_order"] > 0
    rows = [row for row in results["targets"] if row["section"] == "services"]
    assert [row["result"] for row in rows] == ["-", "-"]
    assert "p50 at 1 client, service processes" in result.stdout
