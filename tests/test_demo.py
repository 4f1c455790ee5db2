"""demo.py runs in the suite with small numbers, and its checks can fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import demo
from saga_actors.actors import OrderSystem
from saga_actors.actors.consistency import Check

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--orders", "80", "--concurrency", "8", "--products", "4", "--latency", "0,0.003"]


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "demo.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_json_summary_with_every_check_passing():
    result = run_demo(*SMALL, "--json", "--crash-rate", "0.05")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    orders = summary["orders"]
    assert orders["submitted"] == 80 and orders["pending"] == 0 and orders["in_flight"] == 0
    run = summary["run"]  # what reproduces the run
    assert run["seed"] == 7 and run["options"]["orders"] == 80 and run["options"]["crash_rate"] == 0.05
    assert run["journal"].endswith("journal.db") and run["journal_kept"] is False
    assert orders["confirmed"] + orders["cancelled"] == orders["distinct"]
    assert orders["duplicates_answered_from_first_outcome"] == 80 - orders["distinct"]
    assert {c["name"] for c in summary["checks"]} >= {
        "no order pending",
        "nothing reserved",
        "no payment left authorized",
        "stock conserved",
        "every confirmed order captured exactly its amount",
        "no product oversold",
    }
    assert all(c["ok"] for c in summary["checks"]) and summary["ok"]
    assert set(summary["performance"]["latency_ms"]) == {"p50", "p95", "p99"}
    assert summary["activity"]["restarts"] > 0  # crashes really happened


def test_human_summary_and_plain_progress_lines_when_not_a_terminal():
    result = run_demo(*SMALL)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "\r" not in out
    assert "80/80 answered" in out
    for section in (
        "== Orders ==",
        "== Performance ==",
        "== Stock ==",
        "== Payments ==",
        "== Consistency checks ==",
        "[PASS] stock conserved",
        "all checks passed",
    ):
        assert section in out


def test_kill_and_recover():
    result = run_demo(*SMALL, "--orders", "150", "--kill-and-recover", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    recovery = summary["recovery"]
    assert recovery["reported_before_kill"] >= 1
    assert recovery["rolled_forward"] + recovery["rolled_back"] == recovery["sagas_resumed"]
    names = {c["name"]: c["ok"] for c in summary["checks"]}
    assert names["outcomes reported before the kill unchanged"] is True
    assert all(names.values())
    assert "killed the child (SIGKILL)" in result.stderr


def test_a_kept_journal_continues_from_its_state(tmp_path):
    journal = str(tmp_path / "kept.db")
    first = json.loads(run_demo(*SMALL, "--journal", journal, "--json").stdout)
    second = json.loads(run_demo(*SMALL, "--journal", journal, "--json").stdout)
    assert second["orders"]["in_journal"] == first["orders"]["in_journal"] + second["orders"]["distinct"]
    assert second["ok"]
    for product, stock in second["stock"].items():
        assert stock["before_on_hand"] == first["stock"][product]["on_hand"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--orders", "0"], "must be at least 1"),
        (["--orders", "many"], "expected a whole number"),
        (["--failure-rate", "1.5"], "between 0 and 1"),
        (["--latency", "0.5"], "expected MIN,MAX"),
        (["--latency", "0.5,0.1"], "MIN <= MAX"),
        (["--failure-rate", "0.6", "--crash-rate", "0.6"], "must not exceed 1"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(option, message):
    result = run_demo(*option)
    assert result.returncode == 2
    assert message in result.stderr


def test_same_seed_same_workload():
    args = demo.parse_args(["--seed", "3", "--orders", "50"])
    assert demo.make_workload(args, 1) == demo.make_workload(args, 1)
    other = demo.parse_args(["--seed", "4", "--orders", "50"])
    assert demo.make_workload(args, 1) != demo.make_workload(other, 1)


def test_exit_status_is_1_when_a_check_fails(monkeypatch, capsys):
    original = OrderSystem.check_consistency

    def broken(self, initial_stock=None):
        return [*original(self, initial_stock), Check("stock conserved", False, "101: on hand 3, expected 2")]

    monkeypatch.setattr(OrderSystem, "check_consistency", broken)
    assert demo.main([*SMALL, "--orders", "20"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] stock conserved" in out and "SOME CHECKS FAILED" in out


@pytest.mark.parametrize(
    ("columns", "extra"),
    [(80, []), (40, []), (80, ["--kill-and-recover", "--concurrency", "256"])],
    ids=["80", "40", "80-kill-and-recover"],
)
def test_the_live_progress_line_fits_the_terminal(columns, extra):
    """Run under a pseudo-terminal: every redraw of the progress line fits, so nothing wraps."""
    import os
    import pty
    import re

    env = {**os.environ, "COLUMNS": str(columns), "LINES": "24"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the demo on a terminal
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "demo.py", *SMALL, "--orders", "300", *extra], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    screen = b"".join(chunks).decode(errors="replace").replace("\x1b[K", "")
    segments = re.split(r"[\r\n]", screen)
    progress = [seg for seg in segments if "/300 answered" in seg]
    assert len(progress) >= 2, screen[:500]  # it was redrawn
    assert max(len(seg) for seg in progress) < columns
    if columns == 80:  # and on a standard terminal, nothing else wraps either
        assert max(len(seg) for seg in segments) <= columns, max(segments, key=len)


def test_an_absurd_number_of_orders_is_refused():
    result = run_demo("--orders", "99999999999999999999")
    assert result.returncode == 2 and "--orders is limited" in result.stderr


def test_a_slow_wire_rolls_nothing_back_for_retries_exhausted():
    """The issue's input: every attempt times out (0.5 s) before its answer (0.5-1.0 s) comes back."""
    result = run_demo("--latency", "0.5,1.0", "--orders", "5", "--concurrency", "5", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert "retries_exhausted" not in summary["orders"]["cancelled_by_reason"]
    assert summary["performance"]["seconds"] < 30  # it took 181 s before


def test_a_service_that_refuses_everything_ends_every_order_and_the_checks_say_so():
    result = run_demo(
        "--failure-rate", "1.0", "--crash-rate", "0", "--orders", "10", "--concurrency", "10", "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    checks = {c["name"]: c["ok"] for c in summary["checks"]}
    assert checks["no saga in flight"] and checks["every caller got its outcome"]
    assert summary["orders"]["cancelled_by_reason"] == {"retries_exhausted": 10}


def test_the_demo_leaves_no_temporary_folder_behind(tmp_path):
    import os

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    for extra in ([], ["--kill-and-recover"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "demo.py"), *SMALL, "--json", *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert list(tmp_path.iterdir()) == [], extra


def test_sigterm_stops_the_demo_cleanly(tmp_path):
    import os
    import signal

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "demo.py"), "--orders", "100000", "--latency", "0.01,0.02"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    first = child.stdout.readline()
    assert first.startswith("journal: ")
    assert "answered" in child.stdout.readline()  # under way (a progress line comes each second)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # the temporary journal is gone
