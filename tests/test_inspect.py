"""`python -m saga_actors.persistence`: the journal inspector."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from saga_actors.actors import OrderSystem
from saga_actors.actors.codec import order_codec
from saga_actors.actors.order_saga import OrderSagaData
from saga_actors.actors.validation import validate_order
from saga_actors.persistence import SQLiteJournal
from saga_actors.persistence import __main__ as inspector
from saga_actors.persistence.__main__ import main
from saga_actors.sagas.engine import AbortDecided, CommitDecided, SagaCompleted, SagaStarted, StageStarted
from tests.conftest import DECLINED, execute_sql, make_request

ROOT = Path(__file__).resolve().parent.parent


def test_history_of_one_order_across_streams(tmp_path, capsys):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}) as system:
        system.place_order(make_request("ord-1", [(1, 2)]), timeout=5)
        system.place_order(make_request("ord-2", [(1, 1)], card=DECLINED), timeout=5)
    assert main([str(path), "ord-2"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "orders #",
        "OrderPlaced",
        "saga:order:ord-2 #1",
        "PaymentDeclined",
        "AbortDecided",
        "StockReleased",
        "OrderCancelled",
        "SagaAborted",
    ):
        assert expected in out
    assert "ord-1" not in out


def test_summary_names_unfinished_sagas(tmp_path, capsys):
    path = tmp_path / "o.db"
    journal = SQLiteJournal(path, order_codec())
    order = validate_order(make_request("stuck"))
    journal.append(
        "saga:order:stuck", [SagaStarted("stuck", OrderSagaData.from_order(order)), StageStarted(0)], 0
    )
    journal.close()
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "unfinished sagas (1)" in out and "saga:order:stuck" in out


def test_unknown_id_and_missing_file(tmp_path, capsys):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}):
        pass
    assert main([str(path), "nobody"]) == 1
    assert main([str(tmp_path / "missing.db")]) == 2
    assert "no journal file" in capsys.readouterr().err


def test_runs_as_a_module(tmp_path):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}):
        pass
    result = subprocess.run(
        [sys.executable, "-m", "saga_actors.persistence", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "inventory" in result.stdout and "unfinished sagas: none" in result.stdout


def test_a_path_with_uri_characters_is_read_as_a_path(tmp_path):
    from saga_actors import OrderSystem
    from tests.conftest import make_request

    path = tmp_path / "shop?2024#a%20b.db"
    with OrderSystem(journal_path=path, stock={101: 5}) as system:
        system.place_order(make_request("i1", [(101, 1)]), timeout=5)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "saga_actors.persistence", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "orders" in result.stdout and "inventory" in result.stdout
    after = {p.name for p in tmp_path.iterdir()}
    companions = {path.name + "-wal", path.name + "-shm"}  # WAL readers may recreate these
    assert after - companions == set(before) - companions  # no stray file named after a piece of the path


# --- sequence order, UTC, what a saga waits for, --json, a closed pipe ---


def _saga_journal(path, *sagas):
    """Saga streams `saga:<name>:<id>` with the given events after SagaStarted."""
    journal = SQLiteJournal(path, order_codec())
    try:
        for pid, events in sagas:
            saga_id = pid.split(":", 2)[2]
            order = validate_order(make_request(saga_id))
            journal.append(pid, [SagaStarted(saga_id, OrderSagaData.from_order(order)), *events], 0)
    finally:
        journal.close()


def _numbers(out, stream):
    return [int(n) for n in re.findall(re.escape(stream) + r" #(\d+)", out)]


def test_one_stream_stays_in_sequence_order_when_the_clock_went_back(tmp_path, capsys):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}) as system:
        system.place_order(make_request("ord-1", [(1, 2)]), timeout=5)
    # The clock was stepped back one hour after the saga's first two events
    # (the checksum does not cover the timestamp: this is a legitimate journal).
    execute_sql(
        path,
        "UPDATE events SET timestamp = timestamp - 3600 "
        "WHERE persistence_id = 'saga:order:ord-1' AND sequence_nr >= 3",
    )
    assert main([str(path), "ord-1"]) == 0
    out = capsys.readouterr().out
    assert _numbers(out, "saga:order:ord-1") == [1, 2, 3, 4, 5]
    assert _numbers(out, "orders") == sorted(_numbers(out, "orders")) and len(_numbers(out, "orders")) == 2
    assert main(["--json", str(path), "ord-1"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    saga = [e["sequence_nr"] for e in events if e["persistence_id"] == "saga:order:ord-1"]
    assert saga == [1, 2, 3, 4, 5]
    assert f"{len(events)} events about 'ord-1'" in out


def test_streams_are_merged_by_timestamp(tmp_path, capsys):
    path = tmp_path / "o.db"
    _saga_journal(path, ("saga:order:a1", [StageStarted(0)]))
    journal = SQLiteJournal(path, order_codec())
    try:
        order = validate_order(make_request("a1"))
        journal.append("saga:order:other", [SagaStarted("a1", OrderSagaData.from_order(order))], 0)
    finally:
        journal.close()
    execute_sql(
        path,
        "UPDATE events SET timestamp = 1000 + sequence_nr WHERE persistence_id = 'saga:order:a1'",
        "UPDATE events SET timestamp = 1001.5 WHERE persistence_id = 'saga:order:other'",
    )
    assert main([str(path), "a1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if " #" in line and "Z  saga" in line]
    assert [line.split()[1:3] for line in lines] == [
        ["saga:order:a1", "#1"],
        ["saga:order:other", "#1"],
        ["saga:order:a1", "#2"],
    ]


def test_times_are_shown_in_utc_with_the_zone(tmp_path):
    path = tmp_path / "o.db"
    _saga_journal(path, ("saga:order:t1", [StageStarted(0)]))
    execute_sql(path, "UPDATE events SET timestamp = 1795949144.508")  # 2026-11-29 10:45:44.508 UTC
    result = subprocess.run(
        [sys.executable, "-m", "saga_actors.persistence", str(path), "t1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "America/New_York"},
        check=True,
    )
    assert "2026-11-29T10:45:44.508Z  saga:order:t1 #1" in result.stdout
    assert "05:45:44" not in result.stdout


def _at(monkeypatch, path, pid, seconds_later):
    """Pretend "now" is `seconds_later` after the last event of `pid`."""
    db = sqlite3.connect(path)
    try:
        (last,) = db.execute("SELECT max(timestamp) FROM events WHERE persistence_id = ?", (pid,)).fetchone()
    finally:
        db.close()
    monkeypatch.setattr(inspector, "_now", lambda: last + seconds_later)


def test_an_unfinished_saga_says_what_it_waits_for(tmp_path, capsys, monkeypatch):
    path = tmp_path / "o.db"
    _saga_journal(
        path,
        ("saga:order:fwd", [StageStarted(0)]),
        ("saga:order:cmt", [StageStarted(0), CommitDecided(), StageStarted(1)]),
        (
            "saga:order:rbk",
            [StageStarted(0), AbortDecided("timeout", "authorize_payment", ("reserve_stock",))],
        ),
        ("saga:order:end", [StageStarted(0), CommitDecided(), StageStarted(1), SagaCompleted()]),
    )
    execute_sql(path, "UPDATE events SET timestamp = 1795949144.508")
    _at(monkeypatch, path, "saga:order:fwd", 192)
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "unfinished sagas (3)" in out and "saga:order:end" not in out.split("unfinished sagas")[1]
    sections = out.split("unfinished sagas")[1].split("\n  saga:")
    fwd = next(s for s in sections if s.startswith("order:fwd"))
    assert "last event #2 StageStarted at 2026-11-29T10:45:44.508Z (3 min 12 s ago)" in fwd
    assert (
        "forward, no commit decision yet, stage 1 of 2: waiting for reserve_stock, authorize_payment" in fwd
    )
    assert "rolled back" in fwd and "attempt numbers" in fwd and "not journaled" in fwd
    cmt = next(s for s in sections if s.startswith("order:cmt"))
    assert (
        "committed" in cmt and "stage 2 of 2: waiting for commit_stock, capture_payment, confirm_order" in cmt
    )
    rbk = next(s for s in sections if s.startswith("order:rbk"))
    assert "compensating (timeout), failed step authorize_payment" in rbk
    assert "waiting for reserve_stock (compensation), cancel_order" in rbk

    assert main([str(path), "rbk"]) == 0  # the ID view says the same
    out = capsys.readouterr().out
    assert "waiting for reserve_stock (compensation), cancel_order" in out and "3 min 12 s ago" in out
    assert main([str(path), "end"]) == 0
    out = capsys.readouterr().out
    assert "completed" in out and "waiting for" not in out


def test_a_saga_the_tool_does_not_know_or_cannot_read_is_still_shown(tmp_path, capsys):
    path = tmp_path / "o.db"
    _saga_journal(path, ("saga:refund:r1", [StageStarted(0)]), ("saga:order:bad", [StageStarted(0)]))
    execute_sql(
        path, "UPDATE events SET data = '{oops' WHERE persistence_id = 'saga:order:bad' AND sequence_nr = 2"
    )
    assert main([str(path)]) == 1  # the changed row is also a checksum mismatch
    out = capsys.readouterr().out
    assert "saga:refund:r1" in out and "'refund' is not known to this tool" in out
    assert "saga:order:bad" in out and "#2 StageStarted: unreadable JSON" in out


def test_json_summary(tmp_path, capsys, monkeypatch):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}) as system:
        system.place_order(make_request("ord-1", [(1, 2)]), timeout=5)
    _saga_journal(path, ("saga:order:stuck", [StageStarted(0)]))
    _at(monkeypatch, path, "saga:order:stuck", 60.25)
    assert main(["--json", str(path)]) == 0
    document = json.loads(capsys.readouterr().out)
    streams = {s["persistence_id"]: s for s in document["streams"]}
    assert streams["saga:order:ord-1"]["last_event"] == "SagaCompleted"
    assert document["events"] == sum(s["events"] for s in document["streams"])
    assert document["checksums"] == {"stored": True, "all_match": True, "mismatched": []}
    (stuck,) = document["unfinished_sagas"]
    assert stuck["persistence_id"] == "saga:order:stuck" and stuck["phase"] == "forward"
    assert stuck["stage"] == 0 and stuck["stages"] == 2
    assert stuck["waiting_for"] == [
        {"step": "reserve_stock", "kind": "do"},
        {"step": "authorize_payment", "kind": "do"},
    ]
    assert stuck["last_event"]["sequence_nr"] == 2 and stuck["last_event"]["seconds_ago"] == 60.25
    assert stuck["last_event"]["time"].endswith("Z")

    execute_sql(
        path, "UPDATE events SET data = replace(data, '19.98', '1.98') WHERE persistence_id = 'orders'"
    )
    assert main(["--json", str(path)]) == 1
    checksums = json.loads(capsys.readouterr().out)["checksums"]
    assert checksums["all_match"] is False
    assert checksums["mismatched"] == [{"table": "events", "persistence_id": "orders", "sequence_nr": 1}]


def test_json_history(tmp_path, capsys):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}) as system:
        system.place_order(make_request("ord-2", [(1, 1)], card=DECLINED), timeout=5)
    execute_sql(
        path,
        "UPDATE events SET data = '{not json' WHERE persistence_id = 'saga:order:ord-2' AND sequence_nr = 2",
    )
    assert main(["--json", str(path), "ord-2"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["id"] == "ord-2"
    types = [e["type"] for e in document["events"]]
    assert types[0] == "OrderPlaced" and "AbortDecided" in types and types[-1] == "SagaAborted"
    placed = document["events"][0]
    assert placed["data"]["order_id"] == "ord-2" and placed["checksum_matches"] is True
    assert placed["time"].endswith("Z")
    damaged = next(e for e in document["events"] if e["type"] == "StageStarted")
    assert damaged["data"] is None and damaged["unreadable_data"] == "{not json"
    assert damaged["checksum_matches"] is False
    (saga,) = document["sagas"]
    assert "#2 StageStarted: unreadable JSON, its fields are not known" in saga["notes"]
    assert saga["phase"] == "aborted" and saga["reason"] == "card_declined" and saga["finished"]
    assert main(["--json", str(path), "nobody"]) == 1
    assert json.loads(capsys.readouterr().out) == {
        "id": "nobody",
        "now": ANY_TIME,
        "in_use_by": None,
        "events": [],
        "sagas": [],
    }


class _AnyTime:
    def __eq__(self, other):
        return isinstance(other, str) and other.endswith("Z")


ANY_TIME = _AnyTime()


def test_a_closed_pipe_ends_the_tool_quietly(tmp_path):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}) as system:
        system.place_order(make_request("ord-1", [(1, 2)]), timeout=5)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write: every write fails
    try:
        result = subprocess.run(
            [sys.executable, "-m", "saga_actors.persistence", str(path)],
            cwd=ROOT,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert result.stderr == ""
    assert result.returncode == 141


def test_piped_into_head(tmp_path):
    """`... --json | head -1`: the output (~300 KB) is larger than a pipe holds, so the tool is
    still writing when head exits and meets the closed pipe: it ends quietly, status 141."""
    path = tmp_path / "o.db"
    _saga_journal(path, *[(f"saga:order:s{n}", [StageStarted(0)]) for n in range(300)])
    tool = subprocess.Popen(
        [sys.executable, "-m", "saga_actors.persistence", str(path), "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = subprocess.run(["head", "-1"], stdin=tool.stdout, capture_output=True, text=True, timeout=60)
    tool.stdout.close()
    _, stderr = tool.communicate(timeout=60)
    assert head.stdout == "{\n"
    assert stderr == b""
    assert tool.returncode == 141


# --- what is not a journal, and a journal in use (issue 12) ---


def _refused(capsys, *expected):
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("python -m saga_actors.persistence: error: ")
    for text in expected:
        assert text in err, err


def test_a_directory_is_said_to_be_one(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    _refused(capsys, f"{tmp_path} is a directory, not a journal file")


def test_an_empty_file_is_said_to_be_one(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert main([str(empty)]) == 2
    _refused(capsys, "is an empty file (0 bytes), not a journal")
    assert empty.read_bytes() == b""


def test_other_files_are_said_not_to_be_journals(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a journal\n")
    assert main([str(notes)]) == 2
    _refused(capsys, f"{notes}: not a journal: not a SQLite database")
    other = tmp_path / "other.db"
    execute_sql(other, "CREATE TABLE x (a)")
    assert main([str(other)]) == 2
    _refused(capsys, "without the journal's tables", "it holds x")


def test_a_journal_in_use_says_its_sagas_are_in_flight_in_that_process(tmp_path, capsys):
    """Its unfinished sagas are driven by the process that has it open, not "resumed at the next
    start"; the probe of its lock leaves the lock to the writer."""
    path = tmp_path / "o.db"
    journal = SQLiteJournal(path, order_codec())  # this process is the writer
    try:
        order = validate_order(make_request("busy"))
        journal.append("saga:order:busy", [SagaStarted("busy", OrderSagaData.from_order(order))], 0)
        journal.append("saga:order:busy", [StageStarted(0)], 1)
        assert main([str(path)]) == 0
        out = capsys.readouterr().out
        assert f"unfinished sagas (1): in flight in process {os.getpid()}, which has the journal open" in out
        assert "resumed at the next start" not in out
        assert f"if process {os.getpid()} stops, at the next start: rolled back" in out
        assert main([str(path), "busy"]) == 0
        assert f"in flight in process {os.getpid()}" in capsys.readouterr().out
        assert main(["--json", str(path)]) == 0
        assert json.loads(capsys.readouterr().out)["in_use_by"] == {"pid": os.getpid()}
        journal.append("saga:order:busy", [StageStarted(0)], 2)  # the writer still writes
    finally:
        journal.close()
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "unfinished sagas (1): resumed at the next start" in out and "in flight in" not in out
    assert main(["--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["in_use_by"] is None
    SQLiteJournal(path, order_codec()).close()  # the probe left the lock free


def test_a_journal_in_use_by_another_process_names_it(tmp_path):
    path = tmp_path / "o.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_JOURNAL, str(path)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "open\n"
        result = subprocess.run(
            [sys.executable, "-m", "saga_actors.persistence", str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    assert f"in flight in process {holder.pid}, which has the journal open" in result.stdout


HOLD_JOURNAL = """
import sys
from saga_actors.actors.codec import order_codec
from saga_actors.actors.order_saga import OrderSagaData
from saga_actors.actors.validation import validate_order
from saga_actors.persistence import SQLiteJournal
from saga_actors.sagas.engine import SagaStarted, StageStarted
from tests.conftest import make_request

journal = SQLiteJournal(sys.argv[1], order_codec())
order = validate_order(make_request("held"))
journal.append("saga:order:held", [SagaStarted("held", OrderSagaData.from_order(order)), StageStarted(0)], 0)
print("open", flush=True)
sys.stdin.read()  # until the test closes it
journal.close()
"""


# --- hostile ids and journal text (the ids a tester typed, the text a journal may hold) ---

SPOOF = "\x1b[31mRED\rFAKE LINE\n  [PASS] spoofed"


def _only_printable(out):
    """No character but the line ends that is not printable: nothing moves the cursor,
    colours the terminal or starts a line of its own."""
    return all(line.isprintable() for line in out.split("\n"))


def _hostile_journal(path):
    """A saga whose id, abort reason, step names and one event type hold control characters."""
    journal = SQLiteJournal(path, order_codec())
    try:
        journal.append(
            f"saga:order:{SPOOF}",
            [StageStarted(0), AbortDecided(f"reason {SPOOF}", f"step {SPOOF}", (f"undo {SPOOF}",))],
            0,
        )
    finally:
        journal.close()
    with sqlite3.connect(path) as db:  # a type name no codec writes (its checksum no longer matches)
        db.execute("UPDATE events SET type = ? WHERE sequence_nr = 1", (f"Type{SPOOF}\u202e\x9b",))
    db.close()


def test_what_the_journal_holds_is_printed_with_its_control_characters_escaped(tmp_path, capsys):
    path = tmp_path / "o.db"
    _hostile_journal(path)
    for argv, status in (([str(path)], 1), ([str(path), SPOOF], 0)):  # 1: the changed type's checksum
        assert main(argv) == status
        out = capsys.readouterr().out
        assert _only_printable(out), out
        assert "FAKE LINE" in out and not any(line.startswith("  [PASS]") for line in out.splitlines())
        assert "saga:order:\\x1b[31mRED\\rFAKE LINE\\n  [PASS] spoofed" in out
        assert "Type\\x1b[31mRED" in out and "\\u202e\\x9b" in out
        assert "reason \\x1b[31mRED" in out and "undo \\x1b[31mRED" in out


def test_json_escapes_what_json_leaves_raw_and_stays_exact(tmp_path, capsys):
    """json escapes only what is below U+0020: DEL, the C1 controls (U+009B is a CSI) and the
    bidirectional overrides passed through raw."""
    path = tmp_path / "o.db"
    _hostile_journal(path)
    assert main(["--json", str(path), SPOOF]) == 0
    out = capsys.readouterr().out
    assert _only_printable(out), out
    shown = json.loads(out)
    assert shown["id"] == SPOOF
    assert {e["type"] for e in shown["events"]} == {f"Type{SPOOF}\u202e\x9b", "AbortDecided"}
    inspector._print_json({"s": "café \u202e"})
    assert capsys.readouterr().out == '{\n  "s": "café \\u202e"\n}\n'  # printable text as it is


def test_an_id_longer_than_a_like_pattern_is_looked_up(tmp_path, capsys):
    """An id over 50,000 characters said "FILE is not a readable journal: LIKE or GLOB pattern
    too complex" (exit 2): the journal was fine. The id is looked up, and shown cut short."""
    path = tmp_path / "o.db"
    long_id = "x" * 60_000
    journal = SQLiteJournal(path, order_codec())
    try:
        journal.append(f"saga:order:{long_id}", [StageStarted(0)], 0)
    finally:
        journal.close()
    assert main([str(path), long_id]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 events about 'xxxx") and "... (60,000 characters)" in out
    assert main([str(path), "y" * 50_001]) == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == f"no event mentions {'y' * 100!r}... (50,001 characters)\n"
    # In characters, not bytes: 20,000 three-byte characters were 60,000 bytes of pattern.
    assert main([str(path), "\u20ac" * 20_000]) == 1
    assert capsys.readouterr().out.startswith("no event mentions")


def test_an_id_argument_that_cannot_be_one_is_refused(tmp_path, capsys):
    """`''` showed the summary; bytes that are not UTF-8 were a traceback (UnicodeEncodeError)."""
    path = tmp_path / "o.db"
    _saga_journal(path, ("saga:order:s1", [StageStarted(0)]))
    assert main([str(path), ""]) == 2
    _refused(capsys, "the id is empty")
    assert main([str(path), "\udcff"]) == 2  # what Python makes of the byte 0xff in an argument
    _refused(capsys, "the id '\\udcff' is not valid UTF-8")
    result = subprocess.run(
        [sys.executable, "-m", "saga_actors.persistence", str(path), ""],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "python -m saga_actors.persistence: error: "
        "the id is empty: give an order id (or any id), or leave it out for the summary\n"
    )


def test_what_a_refused_file_holds_is_escaped_in_the_one_line_error(tmp_path, capsys):
    """Another program's database is named by its tables: their names are the file's text too."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute(f'CREATE TABLE "{SPOOF}" (x)')
    db.close()
    assert main([str(path)]) == 2
    _refused(capsys, "it holds \\x1b[31mRED\\rFAKE LINE\\n  [PASS] spoofed")
