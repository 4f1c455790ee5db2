"""demo.py runs in the suite with small numbers, and its checks can fail."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

import demo
from saga_actors._cli import open_problem
from saga_actors.actors import OrderSystem
from saga_actors.actors.consistency import Check
from tests.helpers.cli import NOT_ASCII_NUMBERS, assert_number_refused, bad_journal_files, piped_into_head

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--orders", "80", "--concurrency", "8", "--products", "4", "--latency", "0,0.003"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def temp_dir_left_empty(tmp_path, monkeypatch):
    """Every demo a test runs - a child process or in this one - gets a temporary directory
    of its own, which must be empty when the test ends: no demo leaves a folder behind."""
    fresh = tmp_path / "TMPDIR"
    fresh.mkdir()
    monkeypatch.setenv("TMPDIR", str(fresh))
    monkeypatch.setattr(tempfile, "tempdir", str(fresh))
    yield fresh
    assert sorted(p.name for p in fresh.iterdir()) == []


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
    # Answers count submissions (a repeat gets its order's outcome again), orders count once.
    answers = orders["answers"]
    assert answers["confirmed"] + answers["cancelled"] == 80
    assert answers["confirmed"] >= orders["confirmed"] and answers["cancelled"] >= orders["cancelled"]
    payments = summary["payments"]
    assert payments["captured"] == orders["confirmed"]
    assert payments["all_runs_in_memory"] == {
        k: v for k, v in payments.items() if k.startswith(("capt", "void", "curr"))
    }
    # Amounts in the orders' currency, always with their two decimals (none voided too: 0.00).
    assert payments["currency"] == "USD"
    for total in ("captured_total", "voided_total"):
        assert re.fullmatch(r"\d+\.\d\d", payments[total]), payments[total]
    # A fresh journal: nothing to resume.
    assert summary["recovery"] == {
        "sagas_resumed": 0,
        "rolled_forward": 0,
        "rolled_back": 0,
        "orders_never_started": 0,
        "still_in_flight": 0,
    }
    assert "recovery:" not in result.stderr
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
    # The key says what the text says: submissions answered per second (not distinct orders).
    assert summary["performance"]["submissions_answered_per_second"] > 0
    assert "orders_per_second" not in summary["performance"]
    assert summary["activity"]["restarts"] > 0  # crashes really happened


def test_human_summary_and_plain_progress_lines_when_not_a_terminal():
    result = run_demo(*SMALL)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "\r" not in out
    for section in (
        "== Orders: this run's orders (ids r1-*) ==",
        "== Performance: this run ==",
        "== Stock ==   on hand and reserved: before this run -> after",
        "== Payments: this run's orders ==",
        "== Consistency checks: every order in the journal ==",
        "[PASS] stock conserved",
        "all checks passed",
    ):
        assert section in out
    # The progress line and the summary count the same thing, and say so.
    last = re.findall(r"submissions 80/80 answered: confirmed (\d+), cancelled (\d+)", out)[-1]
    assert f"answers, one per submission: confirmed {last[0]}, cancelled {last[1]}" in out
    distinct = re.search(r"80 submissions of (\d+) distinct orders", out)
    confirmed, cancelled = re.search(r"distinct orders: confirmed (\d+), cancelled (\d+)", out).groups()
    assert int(confirmed) + int(cancelled) == int(distinct.group(1))
    assert re.search(r"[\d.]+ submissions answered per second over", out)
    # Amounts with their currency, thousands separated, two decimals.
    assert re.search(r"captured \d+ \(USD [\d,]+\.\d\d\), voided \d+ \(USD [\d,]+\.\d\d\)", out), out


def test_kill_and_recover_labels_the_placement_after_recovery_and_plots_the_run(tmp_path):
    picture = tmp_path / "run.png"
    result = run_demo(*SMALL, "--orders", "150", "--kill-and-recover", "--json", "--plot", str(picture))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    recovery, orders = summary["recovery"], summary["orders"]
    assert recovery["orders_reported_before_kill"] >= 1
    assert recovery["answers_before_kill"] >= recovery["orders_reported_before_kill"]
    assert recovery["rolled_forward"] + recovery["rolled_back"] == recovery["sagas_resumed"]
    names = {c["name"]: c["ok"] for c in summary["checks"]}
    assert names["outcomes reported before the kill unchanged"] is True
    assert all(names.values())
    # The deliberate second placement is counted apart from the workload's own repeats.
    assert recovery["orders_in_journal_at_recovery"] >= recovery["orders_reported_before_kill"]
    resubmitted = recovery["resubmissions_answered_from_journal"]
    assert resubmitted >= recovery["orders_in_journal_at_recovery"]
    repeats = orders["submitted"] - orders["distinct"]
    assert 0 <= orders["duplicates_answered_from_first_outcome"] <= repeats
    assert (
        orders["duplicates_answered_from_first_outcome"] + resubmitted
        == repeats + recovery["orders_in_journal_at_recovery"]
    )
    assert summary["activity"]["covers"].startswith("since recovery")
    assert summary["performance"]["covers"] == "the placement after recovery"
    # The kill message counts what the progress line counted before it.
    killed = re.search(r"after (\d+) answered submissions \((\d+) distinct", result.stderr)
    assert killed and int(killed.group(1)) == recovery["answers_before_kill"]
    assert int(killed.group(2)) == recovery["orders_reported_before_kill"]
    before_kill = result.stderr[: killed.start()]
    last_progress = re.findall(r"submissions (\d+)/150 answered", before_kill)[-1]
    assert int(last_progress) == recovery["answers_before_kill"]
    assert picture.read_bytes().startswith(PNG_SIGNATURE)
    assert summary["run"]["options"]["plot"] == str(picture)
    # Every order placed before the kill is accounted for: its outcome reported, or finished
    # but not reported (the child died first), or resumed at recovery, or never begun.
    unreported = recovery["orders_finished_before_kill_unreported"]
    assert unreported >= 0
    assert (
        recovery["orders_reported_before_kill"]
        + unreported
        + recovery["sagas_resumed"]
        + recovery["orders_never_started"]
        == recovery["orders_in_journal_at_recovery"]
    )
    assert recovery["at_start"] is None  # a new journal: nothing was left to resume before the run
    text = io.StringIO()
    demo.print_summary(summary, text)
    shown = text.getvalue()
    for count, what in (
        (recovery["orders_in_journal_at_recovery"], "orders of this run placed before the kill:"),
        (recovery["orders_reported_before_kill"], "their outcome reported before the kill"),
        (unreported, "finished before the kill, but their outcome was not reported"),
        (recovery["sagas_resumed"], "unfinished, their sagas resumed"),
        (recovery["orders_never_started"], "their saga never began"),
    ):
        assert re.search(rf"{count}\s+{re.escape(what)}|{re.escape(what)} {count}\b", shown), (what, shown)


def test_a_kept_journal_continues_from_its_state(tmp_path):
    journal = str(tmp_path / "kept.db")
    first = json.loads(run_demo(*SMALL, "--journal", journal, "--json").stdout)
    second = json.loads(run_demo(*SMALL, "--journal", journal, "--json").stdout)
    assert second["orders"]["in_journal"] == first["orders"]["in_journal"] + second["orders"]["distinct"]
    assert second["ok"]
    for product, stock in second["stock"].items():
        assert stock["before_on_hand"] == first["stock"][product]["on_hand"]
    # Orders and payments cover this run; the payments of every run are labelled apart.
    assert second["orders"]["covers"] == "this run's orders (ids r2-*)"
    assert second["payments"]["captured"] == second["orders"]["confirmed"]
    every = second["payments"]["all_runs_in_memory"]
    assert every["captured"] == first["orders"]["confirmed"] + second["orders"]["confirmed"]


def test_restock_before_a_run_on_a_kept_journal(tmp_path):
    journal = str(tmp_path / "kept.db")
    first = json.loads(run_demo(*SMALL, "--journal", journal, "--json").stdout)
    assert "insufficient_stock" in first["orders"]["cancelled_by_reason"]  # it sold out
    result = run_demo(*SMALL, "--journal", journal, "--json", "--restock", "1000")
    assert result.returncode == 0, result.stderr
    second = json.loads(result.stdout)
    assert second["run"]["options"]["restock"] == 1000
    for product, stock in second["stock"].items():
        assert stock["before_on_hand"] == first["stock"][product]["on_hand"]
        assert stock["restocked"] == 1000
    # Enough for every order but those that ask more than there ever was, on purpose.
    large = second["orders"]["larger_than_all_stock"]
    assert 0 < second["orders"]["cancelled_by_reason"].get("insufficient_stock", 0) <= large["distinct"]
    assert large["confirmed"] == 0
    assert second["ok"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--orders", "0"], "must be at least 1"),
        (["--orders", "many"], "expected a whole number"),
        (["--failure-rate", "1.5"], "between 0 and 1"),
        (["--latency", "0.5"], "expected MIN,MAX"),
        (["--latency", "0.5,0.1"], "MIN <= MAX"),
        (["--failure-rate", "0.6", "--crash-rate", "0.6"], "must not exceed 1"),
        (["--restock", "-1"], "must be from 0 to 1,000,000,000 units"),
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
    bars = {len(m.group()) for seg in progress if (m := re.match(r"\[[#.]*\]", seg))}
    assert len(bars) <= 1, progress  # the bar keeps its width while the counts grow
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


def test_the_demo_leaves_no_temporary_folder_behind(temp_dir_left_empty):
    for extra in ([], ["--kill-and-recover"]):
        result = run_demo(*SMALL, "--json", *extra)
        assert result.returncode == 0, result.stderr
        assert list(temp_dir_left_empty.iterdir()) == [], extra


# --- a bad --journal: one line on stderr, exit status 2 (1 is a failed check) ---


def _refused(result, *expected):
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("demo.py: ")
    for text in expected:
        assert text in result.stderr


def test_a_directory_as_the_journal_is_refused(tmp_path):
    _refused(run_demo("--orders", "5", "--journal", str(tmp_path)), str(tmp_path), "a directory")


def test_a_file_that_is_not_a_journal_is_refused_and_left_as_it_was(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a journal\n")
    for extra in ([], ["--kill-and-recover", "--json"]):
        _refused(run_demo("--orders", "5", "--journal", str(notes), *extra), str(notes), "not a journal")
    assert notes.read_text() == "not a journal\n"


def test_a_journal_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "a-file" / "journal.db"
    _refused(
        run_demo("--orders", "5", "--journal", str(path), "--kill-and-recover"),
        f"{tmp_path / 'a-file'} is not a directory",
    )


def test_an_empty_journal_path_is_refused():
    _refused(run_demo("--orders", "5", "--journal", ""), "--journal ''", "an empty path")


# --- stopped by a signal: clean up, no traceback ---


def _start_and_stop(extra, signum, while_running=None):
    """Start a long demo, wait until orders are being answered, send `signum`; its result.
    `while_running(pid)` is called just before the signal."""
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "demo.py"), "--orders", "100000", "--latency", "0.01,0.02", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        first = child.stdout.readline()
        while first.startswith(("services: ", " ")):  # --services processes: where they listen
            first = child.stdout.readline()
        assert first.startswith("journal: ")
        for line in child.stdout:
            if "answered" in line:  # under way (a progress line comes each second)
                break
        if while_running is not None:
            while_running(child.pid)
        child.send_signal(signum)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:  # the test failed: stop it all the same
            child.kill()
            child.communicate()
    return child.returncode, err


def test_sigterm_stops_the_demo_cleanly():
    status, err = _start_and_stop([], signal.SIGTERM)
    assert status == 128 + signal.SIGTERM
    assert "interrupted" in err and "Traceback" not in err
    # and the autouse fixture checks that the temporary journal is gone


def test_ctrl_c_stops_the_demo_cleanly_with_status_130():
    status, err = _start_and_stop([], signal.SIGINT)
    assert status == 130
    assert "interrupted" in err and "Traceback" not in err


def _processes_mentioning(text):
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if text.encode() in cmdline.read():
                    found.append(int(pid))
        except (OSError, ValueError):
            continue  # not a process, or gone
    return found


def test_sigterm_during_kill_and_recover_stops_the_child_too(temp_dir_left_empty):
    status, err = _start_and_stop(["--kill-and-recover"], signal.SIGTERM)
    left = _processes_mentioning(str(temp_dir_left_empty))  # the child's --journal is in there
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
    assert status == 128 + signal.SIGTERM
    assert "interrupted" in err and "Traceback" not in err


# --- the services as processes (--services processes, --kill-service) ---

SERVICES_SMALL = [*SMALL, "--orders", "150", "--crash-rate", "0.05", "--json"]


def _children(pid):
    """The pids of the processes whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after the command's name
        except (OSError, IndexError):
            continue  # not a process, or gone
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _assert_no_service_left(temp_dir, pids):
    """No process mentions the demo's temporary directory (the services' journals are in it), and
    none of `pids` (the services the demo started) is still running."""
    left = _processes_mentioning(str(temp_dir))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_services_as_processes_pass_every_check(temp_dir_left_empty):
    result = run_demo(*SERVICES_SMALL, "--services", "processes")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and all(c["ok"] for c in summary["checks"])
    assert summary["orders"]["pending"] == 0 and summary["run"]["options"]["services"] == "processes"
    services = summary["services"]
    assert services["mode"] == "processes" and services["kill"] is None
    for name in ("inventory", "payment"):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", services[name]["url"])
        assert services[name]["journal"].startswith(str(temp_dir_left_empty))  # in the demo's folder
        assert len(services[name]["pids"]) == 1
    # The demo's options went to the services: their stock, and their faults (crashes, seeded).
    workload = demo.make_workload(demo.parse_args(SERVICES_SMALL), 1)
    assert {int(p): s["before_on_hand"] for p, s in summary["stock"].items()} == workload.stock
    assert services["inventory"]["actor_restarts"] + services["payment"]["actor_restarts"] > 0
    assert summary["activity"]["retries"] > 0
    assert "services: inventory http://127.0.0.1:" in result.stderr  # the progress stream
    _assert_no_service_left(
        temp_dir_left_empty, [*services["inventory"]["pids"], *services["payment"]["pids"]]
    )


def test_kill_service_restarts_it_on_its_port_and_journal_and_every_check_passes(temp_dir_left_empty):
    result = run_demo(*SERVICES_SMALL, "--kill-service", "inventory")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] and all(c["ok"] for c in summary["checks"])
    services = summary["services"]
    kill = services["kill"]
    assert kill["service"] == "inventory" and kill["killed"] and kill["restarted"]
    assert 0 < kill["orders_finished_before"] < summary["orders"]["distinct"]  # part-way
    assert kill["seconds_down"] > 0
    assert services["inventory"]["url"].endswith(f":{kill['port']}")  # the same port
    assert len(services["inventory"]["pids"]) == 2 and len(services["payment"]["pids"]) == 1
    _assert_no_service_left(
        temp_dir_left_empty, [*services["inventory"]["pids"], *services["payment"]["pids"]]
    )


def test_the_summary_says_when_the_service_was_killed_and_restarted():
    result = run_demo(*SMALL, "--kill-service", "payment")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "== Services: two processes over HTTP ==" in out
    assert re.search(r"payment: SIGKILL [\d.]+ s after the engine started, \d+ orders finished;", out), out
    assert re.search(r"restarted on the same port and journal, listening again [\d.]+ s later", out), out
    assert re.search(r"payment +http://127\.0\.0\.1:\d+  pid \d+ -> \d+ ", out), out
    assert "all checks passed" in out


def test_a_kept_journal_keeps_the_services_journals_next_to_it(tmp_path):
    journal = tmp_path / "kept.db"
    first = json.loads(
        run_demo(
            *SMALL, "--orders", "40", "--services", "processes", "--journal", str(journal), "--json"
        ).stdout
    )
    assert sorted(p.name for p in tmp_path.glob("kept*.db")) == [
        "kept-inventory.db",
        "kept-payment.db",
        "kept.db",
    ]
    result = run_demo(
        *SMALL, "--orders", "40", "--services", "processes", "--journal", str(journal), "--json"
    )
    assert result.returncode == 0, result.stderr
    second = json.loads(result.stdout)
    for product, stock in second["stock"].items():  # the inventory service's journal kept its stock
        assert stock["before_on_hand"] == first["stock"][product]["on_hand"]
    assert second["orders"]["covers"] == "this run's orders (ids r2-*)" and second["ok"]
    # Where a kept journal's stock is does not change: the other mode is refused before anything runs.
    refused = run_demo(*SMALL, "--journal", str(journal))
    assert refused.returncode == 2 and "--services processes" in refused.stderr
    (tmp_path / "other.db").touch()
    refused = run_demo(*SMALL, "--services", "processes", "--journal", str(tmp_path / "other.db"))
    assert refused.returncode == 2 and "in-process" in refused.stderr
    assert not (tmp_path / "other-inventory.db").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            ["--kill-service", "inventory", "--services", "in-process"],
            "--kill-service needs --services processes",
        ),
        (["--kill-and-recover", "--services", "processes"], "--kill-service kills one of them"),
        (["--kill-service", "shipping"], "invalid choice"),
    ],
)
def test_bad_service_options_exit_2(option, message):
    result = run_demo(*option)
    assert result.returncode == 2
    assert message in result.stderr


def test_services_as_processes_without_aiohttp_name_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp now fails
    assert demo.main([*SMALL, "--services", "processes"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "pip install 'saga-actors[http]'" in captured.err
    assert "pip install -e '.[http]'" in captured.err  # the form for a checkout too
    assert captured.out == ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_demo_and_its_services(temp_dir_left_empty, signum):
    services = []
    status, err = _start_and_stop(
        ["--services", "processes"], signum, lambda pid: services.extend(_children(pid))
    )
    assert len(services) == 2  # the inventory and the payment, children of the demo
    assert status == 128 + signum
    assert "interrupted" in err and "Traceback" not in err
    _assert_no_service_left(temp_dir_left_empty, services)


# --- --plot ---


def test_plot_draws_a_png_of_the_run(tmp_path):
    picture = tmp_path / "run.png"
    result = run_demo(*SMALL, "--orders", "40", "--plot", str(picture))
    assert result.returncode == 0, result.stderr
    assert picture.read_bytes().startswith(PNG_SIGNATURE)
    assert f"plot: {picture}" in result.stdout


def test_the_plot_marks_restarts_the_kill_and_the_recovery():
    timeline = demo.Timeline()
    for n in range(60):
        timeline.record(0.01 + n / 1000, restarts=n // 20)  # two restarts
    timeline.kill = timeline.now()
    timeline.recovered = timeline.now()
    timeline.new_system()
    timeline.record(0.5, restarts=1)  # the recovered system's first restart
    assert len(timeline.restarts) == 3
    figure = demo.make_figure(timeline, "a run")
    for axes in figure.axes:
        labels = [text.get_text() for text in axes.get_legend().get_texts()]
        assert {"actor restart (3 in all)", "SIGKILL", "recovered; placed again"} <= set(labels)


def test_plot_without_matplotlib_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    assert demo.main([*SMALL, "--plot", str(tmp_path / "run.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'saga-actors[plot]'" in err
    assert err.startswith("demo.py: error: --plot needs matplotlib")
    assert not (tmp_path / "run.png").exists()


# --- the faults a new user found (issue 12): each input, with its right value ---


def test_a_restock_on_a_fresh_run_confirms_more_orders_never_fewer():
    """`--restock 50` on a fresh run lowered the confirmed orders (619 -> 438): the orders meant
    to be too large were sized just above the initial stock, so the restock let them fit and
    each took a whole product. Now they ask for more than all the stock there ever was."""
    plain = json.loads(run_demo(*SMALL, "--json").stdout)
    restocked = json.loads(run_demo(*SMALL, "--json", "--restock", "50").stdout)
    for summary in (plain, restocked):
        assert summary["ok"]
        assert summary["orders"]["larger_than_all_stock"]["distinct"] >= 1
        assert summary["orders"]["larger_than_all_stock"]["confirmed"] == 0
    assert restocked["orders"]["confirmed"] > plain["orders"]["confirmed"]
    for product, stock in restocked["stock"].items():
        assert (
            stock["restocked"] == 50 and stock["before_on_hand"] == plain["stock"][product]["before_on_hand"]
        )


@pytest.mark.parametrize("restock", [0, 50, 1000])
def test_the_too_large_orders_ask_more_than_was_ever_received_whatever_the_restock(restock):
    args = demo.parse_args(["--orders", "400", "--restock", str(restock)])
    fresh = demo.make_workload(args, 1)
    kept = demo.make_workload(args, 2, received={p: 10 * n for p, n in fresh.stock.items()})
    for workload, ever in ((fresh, fresh.stock), (kept, {p: 10 * n for p, n in fresh.stock.items()})):
        large = [r for r in workload.requests if r["order_id"] in workload.too_large]
        assert len({r["order_id"] for r in large}) >= 5
        for request in large:
            item = request["items"][0]
            assert item["quantity"] > ever[item["product_id"]] + restock
    # The same seed gives the same orders; only the size of the too-large ones follows the stock.
    shape = demo.make_workload(args, 1, received={p: 10 * n for p, n in fresh.stock.items()})
    assert [r["order_id"] for r in shape.requests] == [r["order_id"] for r in fresh.requests]
    assert shape.too_large == fresh.too_large


def test_the_readme_states_what_a_run_asks_for():
    """The README said "about 4.4 x --orders / --products units ... 550 with the defaults"; a run
    asked for about 1,900 units per product, most of them in the deliberately too-large orders."""
    args = demo.parse_args([])
    workload = demo.make_workload(args, 1)
    distinct = {r["order_id"]: r for r in workload.requests}
    ordinary = sum(
        item["quantity"]
        for order_id, request in distinct.items()
        if order_id not in workload.too_large
        for item in request["items"]
    )
    per_product = round(ordinary / args.products)
    readme = (ROOT / "README.md").read_text()
    assert f"{per_product} with the defaults" in readme, per_product
    assert 3.9 <= ordinary / args.orders <= 4.1 and "about 4 x `--orders` / `--products`" in readme
    share = len(workload.too_large) / len(distinct)
    assert 0.02 <= share <= 0.04 and "about 3% of the orders" in readme


def test_a_run_on_a_journal_left_by_an_interrupted_run_says_what_it_resumed(tmp_path):
    """Ctrl-C a run on --journal J, run again on J: the orders in flight at the stop are resumed,
    said in a recovery line and in --json, and finished before the new run places its own, so
    that the stock it starts from holds no reservation of theirs."""
    journal = str(tmp_path / "kept.db")
    status, err = _start_and_stop(["--journal", journal], signal.SIGINT)
    assert status == 130 and "Traceback" not in err
    result = run_demo(*SMALL, "--journal", journal, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    found = summary["recovery"]
    assert found["sagas_resumed"] + found["orders_never_started"] >= 1  # 64 customers were ordering
    assert found["rolled_forward"] + found["rolled_back"] == found["sagas_resumed"]
    assert found["still_in_flight"] == 0
    assert (
        f"recovery: {demo.plural(found['sagas_resumed'], 'saga')} resumed ({found['rolled_forward']} "
        f"rolled forward, {found['rolled_back']} rolled back)"
    ) in " ".join(result.stderr.split())
    assert all(stock["before_reserved"] == 0 for stock in summary["stock"].values())
    assert summary["orders"]["covers"] == "this run's orders (ids r2-*)" and summary["ok"]
    text = io.StringIO()
    demo.print_summary(summary, text)
    assert "== Recovery: an earlier run's unfinished orders, found at the start ==" in text.getvalue()
    assert "every one finished before this run's orders were placed" in text.getvalue()


def test_the_stock_note_says_whose_reservations_a_run_started_with():
    """Units reserved before the run can only be an earlier run's orders still in flight."""
    summary = json.loads(run_demo(*SMALL, "--orders", "20", "--json").stdout)
    text = io.StringIO()
    demo.print_summary(summary, text)
    assert "reserved before this run" not in text.getvalue()
    first = next(iter(summary["stock"].values()))
    first["before_reserved"] = 3
    summary["recovery"].update(sagas_resumed=1, rolled_forward=1, still_in_flight=1)  # one is stuck
    text = io.StringIO()
    demo.print_summary(summary, text)
    shown = " ".join(text.getvalue().split())  # as a reader reads it, lines wrapped at 80 columns
    assert "reserved before this run: units held by an earlier run's orders still in flight" in shown
    assert "1 saga still in flight when this run began" in shown


def test_a_file_the_demo_cannot_use_is_named_truly():
    """`--journal /proc/version`: an existing file it cannot write said "No such file or directory"."""
    if not os.path.exists("/proc/version"):
        pytest.skip("no /proc/version here")
    _refused(run_demo("--orders", "5", "--journal", "/proc/version"), "/proc/version", "not a journal")
    result = run_demo("--orders", "5", "--journal", "/proc/version")
    assert "No such file" not in result.stderr
    # A folder that does not exist is refused before anything runs: none is made for a journal.
    _refused(run_demo("--orders", "5", "--journal", "/proc/x/y.db"), "no folder /proc/x")


def test_an_open_error_names_the_file_the_system_refused(tmp_path):
    journal = str(tmp_path / "j.db")
    lock = FileNotFoundError(2, "No such file or directory", journal + ".lock")
    assert open_problem(journal, lock) == (
        f"journal {journal} cannot be created: cannot create {journal}.lock (No such file or directory)"
    )
    (tmp_path / "j.db").write_bytes(b"")
    denied = PermissionError(13, "Permission denied", journal)
    assert open_problem(journal, denied) == f"journal {journal} cannot be opened: Permission denied"
    assert open_problem(journal, RuntimeError("other")) is None


def test_the_progress_bar_keeps_its_width_while_the_counts_grow():
    """[.................] -> [#########]: the bar gave way to the growing counts."""
    stream = io.StringIO()
    progress = demo.Progress(1000, stream)
    progress.started -= 10  # answered at a rate a run has (this loop is faster than any)
    for n in range(1000):
        progress.record(n % 3 != 0)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[.") and lines[-1].startswith("[#")
    widths = {len(re.match(r"\[[#.]*\]", line).group()) for line in lines}
    assert len(widths) == 1, lines
    assert max(len(line) for line in lines) < 80
    for total in (1, 9, 10, 150, 999, 1000, 123456):  # the widest counts fit beside the bar
        bar = demo.Progress(total, io.StringIO()).bar_width(80)
        for c in range(0, total + 1, max(1, total // 1000)):
            counts = f"{total}/{total} answered: confirmed {c}, cancelled {total - c}, 9999/s"
            shown = (f"[{'#' * bar}]" if bar else "") + f" submissions {counts}"
            assert len(shown) <= 79, (total, c)


def test_money_has_its_currency_thousands_and_two_decimals():
    assert demo.money("USD", "55763.04") == "USD 55,763.04"
    assert demo.money("USD", "0") == "USD 0.00"
    assert demo.money("USD", "0.5") == "USD 0.50"


def test_the_plot_title_counts_submissions_and_orders_and_the_legend_says_what_a_line_is():
    args = demo.parse_args(["--orders", "1000"])
    summary = {"orders": {"submitted": 1000, "distinct": 940}}
    title = demo.run_title(args, summary)
    assert title.startswith("demo.py: 1000 submissions of 940 distinct orders, 64 customers")
    timeline = demo.Timeline()
    for n in range(200):
        timeline.answers.append((n * 0.02, 0.01 + n / 10000))
    figure = demo.make_figure(timeline, title)
    labels = [text.get_text() for text in figure.axes[1].get_legend().get_texts()]
    assert any(re.fullmatch(r"median \(p50\) of each \d+ ms interval", label) for label in labels), labels
    assert any(re.fullmatch(r"95th percentile \(p95\) of each \d+ ms interval", label) for label in labels)
    assert figure.get_suptitle() == title


def test_install_hints_say_both_forms(monkeypatch, capsys, tmp_path):
    """The package is not on the index yet: each hint gives the checkout's form too."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert demo.main([*SMALL, "--plot", str(tmp_path / "run.png")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'saga-actors[plot]' (from a checkout: pip install -e '.[plot]')" in err
    from saga_actors.sagas import prometheus

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError) as missing:
        prometheus.import_prometheus_client()
    assert "pip install 'saga-actors[metrics]' (from a checkout: pip install -e '.[metrics]')" in str(
        missing.value
    )
    readme = (ROOT / "README.md").read_text()
    for extra in ("plot", "metrics"):
        assert f"pip install 'saga-actors[{extra}]'" in readme and f"pip install -e '.[{extra}]'" in readme


# --- the reader of the output goes away (`| head`): quietly, status 141, nothing left ---


def test_piped_into_head_the_demo_stops_quietly_with_status_141(temp_dir_left_empty):
    """`demo.py --orders 1000 | head -1` exited 1 with BrokenPipeError tracebacks: customer threads
    died in the progress line (their orders never placed), the main thread in the summary.
    The summary of 300 products is larger than the pipe (tests/helpers/cli.py). With --services
    processes, the services were left running when the pipe closed as they were named."""
    for extra in ([], ["--kill-and-recover"], ["--json"], ["--services", "processes"]):
        status, first, err = piped_into_head(
            [sys.executable, str(ROOT / "demo.py"), *SMALL, "--orders", "1000", "--products", "300", *extra],
            cwd=str(ROOT),
        )
        assert status == 141, extra
        if extra == ["--json"]:  # the progress lines are on stderr, the summary on stdout
            assert first == "{\n" and "Traceback" not in err and "interrupted" not in err
        else:
            assert err == "", extra
            assert first.startswith("services: " if "--services" in extra else "journal: ")
        # A child's --journal is in there, and the services' journals.
        left = _processes_mentioning(str(temp_dir_left_empty))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert left == [], extra
        # and the autouse fixture checks that the temporary folder is gone


class _ReaderGone(io.StringIO):
    """A stdout whose reader went away after the first line."""

    def write(self, text):
        if "\n" in self.getvalue():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_closed_pipe_kills_no_customer_and_stops_the_run(monkeypatch, capsys):
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    monkeypatch.setattr(sys, "stdout", _ReaderGone())
    placed = []
    original = OrderSystem.place_order
    monkeypatch.setattr(
        OrderSystem, "place_order", lambda self, *a, **k: placed.append(1) or original(self, *a, **k)
    )
    assert demo.main([*SMALL, "--orders", "1000"]) == 141
    assert died == []  # every customer ended as asked, none of a BrokenPipeError
    assert len(placed) < 1000  # the run stopped at the first line it could not write
    assert capsys.readouterr().err == ""


# --- Ctrl-C while the demo loads ---


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_while_the_library_loads_exits_quietly(signum, status):
    """Ctrl-C in the first ~0.15 s (the imports) printed a KeyboardInterrupt traceback. The signal
    is sent once the library is being imported: `-X importtime` says when one of its modules is."""
    child = subprocess.Popen(
        [sys.executable, "-X", "importtime", str(ROOT / "demo.py"), *SMALL],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stderr is not None
        for line in child.stderr:
            if "saga_actors." in line:  # a module of it loaded: the package itself is still loading
                break
        child.send_signal(signum)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == status
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert out == ""  # stopped before it began


# --- what a refused journal leaves: nothing ---


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _bad_journals(tmp_path):
    bad_journal_files(tmp_path)
    return {
        "a dangling symlink": ("dangling", "a symbolic link to 'nowhere.db', which does not exist"),
        "a symlink loop": ("loop1", "a symbolic link in a loop"),
        "another program's database": ("other.db", "not a journal: a SQLite database without"),
        "a folder that does not exist, 2,001 deep": ("/".join(["d"] * 2001) + "/j.db", "no folder"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "a dangling symlink",
        "a symlink loop",
        "another program's database",
        "a folder that does not exist, 2,001 deep",
    ],
)
def test_a_refused_journal_leaves_nothing_behind(case, tmp_path):
    """A dangling symlink or a loop left `nowhere.db.lock` / `loop1.lock` (the library's lock
    file, made before it refuses the file; with --kill-and-recover the child said it, in three
    lines); a deep path that could not be opened left the 2,001 folders made for it."""
    path, message = _bad_journals(tmp_path)[case]
    before = _tree(tmp_path)
    for extra in ([], ["--kill-and-recover"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "demo.py"), "--orders", "5", "--journal", path, *extra],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        _refused(result, message)
        assert _tree(tmp_path) == before, extra


def test_a_lock_file_that_was_there_before_is_left_there(tmp_path):
    _bad_journals(tmp_path)
    (tmp_path / "other.db.lock").write_text("")
    _refused(run_demo("--orders", "5", "--journal", str(tmp_path / "other.db")), "not a journal")
    assert (tmp_path / "other.db.lock").exists()


# --- --plot: a file that cannot be written is found before the run ---


def _bad_plots(tmp_path):
    (tmp_path / "x.png").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    return {
        "a directory": (str(tmp_path / "x.png"), "a directory, not a picture file"),
        "a FIFO": (str(tmp_path / "fifo.png"), "not a regular file"),
        "a name too long": (str(tmp_path / ("p" * 300 + ".png")), "File name too long"),
        "a folder that does not exist": (str(tmp_path / "none" / "p.png"), "no folder"),
    }


@pytest.mark.parametrize("case", ["a directory", "a FIFO", "a name too long", "a folder that does not exist"])
def test_a_plot_that_cannot_be_written_is_refused_before_the_run(case, tmp_path):
    path, message = _bad_plots(tmp_path)[case]
    result = run_demo("--orders", "100000", "--plot", path)  # a run would take minutes
    _refused(result, f"--plot {path}: ", message)  # and nothing ran: nothing on stdout


def test_a_plot_in_a_folder_it_cannot_write_in_is_refused_before_the_run(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    if os.access(folder, os.W_OK):  # root may write anywhere: say what os.access says to others
        access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda path, mode: access(path, mode) and not (path == str(folder) and mode & os.W_OK),
        )
    assert demo.plot_problem(str(folder / "p.png")) == (
        f"--plot {folder / 'p.png'}: cannot be created: no permission to write in {folder}"
    )


# --- numbers in ASCII digits ---


@pytest.mark.parametrize(
    "option", ["--orders", "--seed", "--restock", "--concurrency", "--products", "--failure-rate"]
)
@pytest.mark.parametrize(("text", "taken_as"), NOT_ASCII_NUMBERS)
def test_numbers_are_written_in_ascii_digits(option, text, taken_as, capsys):
    assert_number_refused(demo.parse_args, option, text, capsys)


@pytest.mark.parametrize("latency", ["0,\u0661", "\u0660.1,1", "nan,1", "0,inf"])
def test_a_latency_is_written_in_ascii_digits(latency, capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--latency", latency])
    assert "expected MIN,MAX in seconds" in capsys.readouterr().err
