"""The benchmark's target table prints (cheap sections, --quick); no timing is asserted here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_cheap_sections_print_the_target_table_and_write_nothing():
    reference = ROOT / "benchmarks" / "results.json"
    before = reference.read_bytes() if reference.exists() else None
    result = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--quick", "--only", "critical_path,per_order"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("machine: ")
    assert "fsync" in out.splitlines()[2]
    table = out[out.index("== Targets") :]
    header, *rows = table.splitlines()[1:]
    assert header.split()[:4] == ["section", "metric", "measured", "target"]
    assert header.rstrip().endswith("result")
    assert any(re.match(r"critical_path\s+p50 latency.*\s(PASS|MISS)$", row) for row in rows), table
    assert "actor messages (tell + ask)" in out  # the per-order accounting table
    assert (reference.read_bytes() if reference.exists() else None) == before  # --quick/--only write nothing


def test_cluster_section_skips_without_a_postgresql_server():
    """No server (nothing listens on the given URL's port): the section says why and returns
    {"skipped": ...}; the run goes on. Fast: no process is started."""
    env = {**os.environ, "SAGA_ACTORS_BENCH_POSTGRES": "postgresql://postgres@127.0.0.1:1/postgres"}
    result = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--quick", "--only", "cluster"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    section = result.stdout[result.stdout.index("cluster:") :]
    assert section.splitlines()[1].startswith("  skipped: "), section


@pytest.mark.skipif(not os.environ.get("SAGA_ACTORS_TEST_POSTGRES"), reason="needs SAGA_ACTORS_TEST_POSTGRES")
def test_cluster_section_quick_run(tmp_path):
    """The cluster section against the tests' server (about 15 s): every row, no failed order,
    the take-over seen. Nothing is timed here."""
    pytest.importorskip("aiohttp")
    pytest.importorskip("psycopg")
    out = tmp_path / "results.json"
    env = {**os.environ, "SAGA_ACTORS_BENCH_POSTGRES": os.environ["SAGA_ACTORS_TEST_POSTGRES"]}
    result = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--quick", "--only", "cluster", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    cluster = json.loads(out.read_text())["cluster"]
    for key in ("sqlite_1", "postgres_1_writer", "postgres_1", "postgres_3"):
        assert cluster[key]["failed"] == 0, cluster[key]
        assert cluster[key]["orders_per_s"] > 0 and cluster[key]["nodes_cpu_ms_per_order"] > 0
    assert cluster["takeover"]["taken_over_s"] is not None
    assert cluster["takeover"]["all_finished_s"] is not None
    assert "take-over after SIGKILL" in result.stdout
