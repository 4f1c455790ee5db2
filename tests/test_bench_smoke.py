"""The benchmark's target table prints (cheap sections, --quick); no timing is asserted here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
