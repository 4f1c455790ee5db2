"""The trip example: a saga that is not about orders, on the public runtime.

Its rules as pure functions; the runtime end to end against flaky services;
idempotent start by saga id (in flight, finished, after a restart); and a
process killed with SIGKILL mid-saga, recovered on the same journal.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from saga_actors.examples import trip
from saga_actors.examples.trip import (
    SERVICES,
    BookingState,
    Confirm,
    Confirmed,
    GetBookings,
    Held,
    Hold,
    HoldRefused,
    Release,
    Released,
    TripRequest,
    check_trips,
    decide,
    evolve,
    trip_runtime,
)
from saga_actors.sagas.runtime import SagaConflict, SagaOutcome
from saga_actors.sagas.simulation import FaultPlan
from tests.helpers.cli import NOT_ASCII_NUMBERS, assert_number_refused, bad_journal_files, piped_into_head

ROOT = Path(__file__).resolve().parent.parent
TRIP = TripRequest("Ada", "LH123", "Adlon", "compact")


def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.01)


def apply(state: BookingState, command) -> list:
    events = decide(command, state)
    for event in events:
        evolve(state, event)
    return events


# --- the rules, without threads ---


def test_a_hold_takes_a_unit_until_released_and_a_repeat_changes_nothing():
    state = BookingState(capacity={"LH123": 1})
    assert apply(state, Hold("t1", "LH123")) == [Held("t1", "LH123")]
    assert apply(state, Hold("t1", "LH123")) == []  # a repeat: its first answer
    assert trip.answer(Hold("t1", "LH123"), state) == (True, None)
    assert apply(state, Hold("t2", "LH123")) == [HoldRefused("t2", "LH123", "sold_out")]
    assert trip.answer(Hold("t2", "LH123"), state) == (False, "sold_out")
    assert apply(state, Release("t1")) == [Released("t1")]
    assert state.taken == {"LH123": 0}
    assert apply(state, Hold("t3", "LH123")) == [Held("t3", "LH123")]  # the unit is free again


def test_a_release_before_its_hold_leaves_a_tombstone_that_refuses_the_late_hold():
    state = BookingState(capacity={"LH123": 1})
    assert apply(state, Release("late")) == [Released("late")]
    assert apply(state, Hold("late", "LH123")) == []
    assert trip.answer(Hold("late", "LH123"), state) == (False, "released")
    assert state.taken.get("LH123", 0) == 0


def test_confirm_is_final_and_cannot_be_released():
    state = BookingState(capacity={"Adlon": 2})
    apply(state, Hold("t1", "Adlon"))
    assert apply(state, Confirm("t1")) == [Confirmed("t1")]
    assert apply(state, Confirm("t1")) == []
    assert apply(state, Release("t1")) == []
    assert trip.answer(Release("t1"), state) == (False, "already_confirmed")
    assert trip.answer(Confirm("t2"), state) == (False, "not_held (None)")
    assert apply(state, Hold("t9", "Ritz")) == [HoldRefused("t9", "Ritz", "unknown_item")]


# --- the runtime, end to end ---


def test_trips_against_flaky_services_end_all_booked_or_all_undone():
    faults = {
        name: FaultPlan(failure_rate=0.2, crash_rate=0.03, max_latency=0.003, seed=n)
        for n, name in enumerate(SERVICES)
    }
    trips = trip._trips(40, seed=5)
    with trip_runtime(faults=faults) as runtime:
        futures = {trip_id: runtime.submit(trip_id, request) for trip_id, request in trips}
        outcomes = {trip_id: f.get(timeout=60) for trip_id, f in futures.items()}
        assert runtime.wait_idle(30)
        assert check_trips(runtime, outcomes) == []
        metrics = runtime.metrics()
        assert metrics["retries"] > 0 and metrics["in_flight"] == 0
        assert {o.reason for o in outcomes.values() if not o.committed} <= {"sold_out", "unknown_item"}
        assert any(o.committed for o in outcomes.values())
        # a trip to a flight that does not exist is rolled back, whatever else
        refused = [t for t, r in trips if r.flight == "XX999"]
        assert refused and not any(outcomes[t].committed for t in refused)


def test_one_saga_per_id_while_running_once_finished_and_after_a_restart(tmp_path):
    path = str(tmp_path / "trips.db")
    slow = {"hotels": FaultPlan(min_latency=0.2, max_latency=0.2, seed=1)}
    with trip_runtime(journal=path, faults=slow) as runtime:
        first = runtime.submit("trip-1", TRIP)
        second = runtime.submit("trip-1", TripRequest("Ada", "LH123", "Adlon", "compact"))  # equal data
        other = runtime.submit("trip-1", TripRequest("Bob", "BA456", "Savoy", "van"))
        with pytest.raises(SagaConflict, match="trip-1"):
            other.get(timeout=5)
        outcome = first.get(timeout=10)
        assert outcome == SagaOutcome("trip-1", True, None) and second.get(timeout=10) == outcome
        bookings = runtime.ask("flights", GetBookings())
        assert list(bookings) == ["trip-1"]
        # finished: answered from the journal, not run again
        assert runtime.run("trip-1", TRIP, timeout=5) == outcome
        with pytest.raises(SagaConflict):
            runtime.run("trip-1", TripRequest("Bob", "BA456", "Savoy", "van"), timeout=5)
        events = runtime.journal.highest_sequence_nr("saga:trip:trip-1")
    with trip_runtime(journal=path) as runtime:
        assert runtime.run("trip-1", TRIP, timeout=5) == outcome
        assert runtime.journal.highest_sequence_nr("saga:trip:trip-1") == events
        assert runtime.outcome("trip-1") == outcome and runtime.outcome("never") is None
        assert runtime.ask("flights", GetBookings())["trip-1"].status == "confirmed"


def test_a_killed_participant_restarts_and_every_trip_still_ends_whole():
    slow = {name: FaultPlan(min_latency=0.001, max_latency=0.01, seed=3) for name in SERVICES}
    trips = trip._trips(30, seed=9)
    with trip_runtime(faults=slow) as runtime:
        futures = {trip_id: runtime.submit(trip_id, request) for trip_id, request in trips}
        for name in ("flights", "hotels", "cars"):
            runtime.kill(name)
        saga = (
            next(n for n in runtime.actor_names() if n.startswith("saga:")) if runtime.in_flight() else None
        )
        if saga:
            runtime.kill(saga)
        outcomes = {trip_id: f.get(timeout=60) for trip_id, f in futures.items()}
        assert runtime.wait_idle(30)
        assert check_trips(runtime, outcomes) == []
        assert runtime.metrics()["restarts"] >= 3


def test_sigkill_mid_saga_then_recovery_rolls_forward_or_back_and_nothing_is_half_done(tmp_path):
    path = tmp_path / "trips.db"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "saga_actors.examples.trip",
            "--journal",
            str(path),
            "--trips",
            "12",
            "--latency",
            "0.05,2.0",
            "--failure-rate",
            "0",
            "--crash-rate",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def journaled(sql: str) -> int:
        if not path.exists():
            return 0
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
            try:
                return int(db.execute(sql).fetchone()[0])
            finally:
                db.close()
        except sqlite3.Error:
            return 0

    try:
        # Killed once one trip has its commit decision journaled and another is still unfinished.
        wait_for(
            lambda: (
                journaled("SELECT count(*) FROM events WHERE type = 'CommitDecided'") >= 1
                or child.poll() is not None
            ),
            what="a commit decision",
        )
        assert child.poll() is None, child.communicate()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    trips = dict(trip._trips(12, seed=1))
    with trip_runtime(journal=str(path)) as runtime:
        report = runtime.recovery()
        assert report.sagas_resumed >= 1
        assert report.rolled_forward + report.rolled_back == report.sagas_resumed
        assert runtime.wait_idle(30)
        outcomes = {trip_id: runtime.outcome(trip_id) for trip_id in trips}
        started = {t: o for t, o in outcomes.items() if o is not None}
        assert len(started) >= report.sagas_resumed
        # rolled forward: confirmed everywhere; rolled back (presumed abort): nothing held anywhere
        assert check_trips(runtime, started) == []
        # the workload again: every trip that began is answered from the journal, the others run
        again = {t: runtime.run(t, request, timeout=30) for t, request in trips.items()}
        assert all(again[t] == o for t, o in started.items())
        assert check_trips(runtime, again) == []


def test_the_example_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "saga_actors.examples.trip", "--trips", "8", "--seed", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every trip all booked or all undone" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trips", "0"], "--trips"),
        (["--latency", "x"], "--latency"),
        (["--failure-rate", "2"], "failure_rate"),
    ],
)
def test_bad_options_exit_2_with_one_line(args, message, capsys):
    assert trip.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"{trip.PROG}: error: ")


# --- the command line as a new user met it (issue 12) ---


def _journals(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a journal\n")
    bad_journal_files(tmp_path)
    return {
        "a directory": (str(tmp_path), "a directory, not a journal file"),
        "a file that is not a journal": (str(notes), "not a journal: not a SQLite database"),
        "an empty path": ("", "--journal '': an empty path"),
        # none is made for a journal (one 2,001 folders deep was left behind)
        "a folder that does not exist": (str(tmp_path / "no" / "such" / "y.db"), "no folder"),
        # these left the library's lock file, `nowhere.db.lock`, `loop1.lock`, `other.db.lock`
        "a dangling symlink": (str(tmp_path / "dangling"), "a symbolic link to 'nowhere.db', which does not"),
        "a symlink loop": (str(tmp_path / "loop1"), "a symbolic link in a loop"),
        "another program's database": (str(tmp_path / "other.db"), "a SQLite database without the journal's"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "a directory",
        "a file that is not a journal",
        "an empty path",
        "a folder that does not exist",
        "a dangling symlink",
        "a symlink loop",
        "another program's database",
    ],
)
def test_a_bad_journal_is_one_line_and_exit_status_2(case, tmp_path, capsys):
    """Each printed a traceback and exited 1 (NotAJournal, ValueError, FileNotFoundError)."""
    path, message = _journals(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert trip.main(["--trips", "2", "--journal", path]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith("python -m saga_actors.examples.trip: error: ")
    assert message in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made, nothing changed


def test_a_journal_in_use_is_one_line_too(tmp_path, capsys):
    path = str(tmp_path / "trips.db")
    with trip_runtime(journal=path):
        assert trip.main(["--trips", "2", "--journal", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{trip.PROG}: error: journal {path} is in use by process {os.getpid()}")
    assert len(err.splitlines()) == 1


def _stop_mid_run(tmp_path, signum):
    """Start a run whose trips take seconds, send `signum` once it is booking; its result."""
    child = subprocess.Popen(
        [sys.executable, "-m", "saga_actors.examples.trip", "--trips", "12", "--latency", "1,2",
         "--failure-rate", "0", "--crash-rate", "0", "--journal", str(tmp_path / "trips.db")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline() == "booking 12 trips\n"  # each trip takes 2 s at least
        child.send_signal(signum)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return child.returncode, out, err


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_it_without_a_traceback(tmp_path, signum, status):
    code, out, err = _stop_mid_run(tmp_path, signum)
    assert code == status, err
    assert "Traceback" not in err
    assert err == (
        f"{trip.PROG}: interrupted; the unfinished trips resume on the next run on {tmp_path / 'trips.db'}\n"
    )
    assert "booked" not in out  # it stopped before any verdict


def test_piped_into_head_it_stops_quietly_with_status_141():
    """`... | head -1` exited 1 with a BrokenPipeError traceback. 200 trips' lines are more than
    the pipe holds (tests/helpers/cli.py)."""
    status, first, err = piped_into_head(
        [sys.executable, "-m", "saga_actors.examples.trip", "--trips", "200", "--latency", "0,0.001"],
        cwd=str(ROOT),
    )
    assert (status, first, err) == (141, "booking 200 trips\n", "")


@pytest.mark.parametrize("option", ["--trips", "--seed", "--failure-rate", "--crash-rate"])
@pytest.mark.parametrize(("text", "taken_as"), NOT_ASCII_NUMBERS)
def test_numbers_are_written_in_ascii_digits(option, text, taken_as, capsys):
    assert_number_refused(trip.main, option, text, capsys)


@pytest.mark.parametrize("latency", ["0,\u0661", "\u0660.1,1", "nan,1", "0,inf"])
def test_a_latency_is_written_in_ascii_digits(latency, capsys):
    assert trip.main(["--latency", latency]) == 2
    assert "--latency must be MIN,MAX seconds" in capsys.readouterr().err


def test_help_shows_every_default():
    parser = trip._parser()
    for action in parser._actions:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            continue
        assert f"(default {action.default})" in action.help, action.option_strings
    journal = next(a for a in parser._actions if "--journal" in a.option_strings)
    assert "(default: in memory)" in journal.help


def test_counts_take_their_plural():
    one = {"t1": SagaOutcome("t1", True, None), "t2": SagaOutcome("t2", False, "sold_out")}
    assert trip.summary_line(one, {"retries": 1, "compensations": 1, "restarts": 1}) == (
        "1 booked, 1 rolled back; 1 retry, 1 compensation, 1 restart"
    )
    assert trip.summary_line(one, {"retries": 2, "compensations": 0, "restarts": 3}) == (
        "1 booked, 1 rolled back; 2 retries, 0 compensations, 3 restarts"
    )
    assert trip.plural(1, "unfinished trip") == "1 unfinished trip"
    assert trip.plural(2, "problem") == "2 problems"
