"""Stored data cannot change silently: checksums on every row, decode failures
that name their row, and a schema version that is recorded, checked and
migrated. (SQLite backend; the contract itself: tests/test_journal_contract.py.)"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from decimal import Decimal

import pytest

from saga_actors.actors import OrderSystem
from saga_actors.persistence import (
    EventCodec,
    JournalCorrupted,
    NotAJournal,
    SerializationError,
    SQLiteJournal,
)
from saga_actors.persistence import sqlite as sqlite_module
from saga_actors.persistence.__main__ import main as inspect
from saga_actors.persistence.sqlite import SCHEMA_VERSION, row_checksum
from tests.conftest import execute_sql, make_request
from tests.test_journal_contract import CODEC, Counter, Happened

PID = "p-7"


@pytest.fixture
def path(tmp_path):
    return tmp_path / "journal.db"


@pytest.fixture
def written(path):
    """p-7: #1 Happened(1), #2 Happened(50, "captured 13.10"), #3 Happened(3); a snapshot at #2."""
    journal = SQLiteJournal(path, CODEC)
    journal.append(PID, [Happened(1), Happened(50, "captured 13.10"), Happened(3)], 0)
    journal.save_snapshot(PID, 2, Counter(2, {"amount": Decimal("13.10")}))
    journal.close()
    return path


def _reseal(path, table="events"):
    """Recompute every checksum: a row written wrong by the code itself, not changed later."""
    db = sqlite3.connect(path)
    db.create_function("row_checksum", 5, row_checksum)
    db.execute(
        f"UPDATE {table} SET checksum = row_checksum(persistence_id, sequence_nr, type, version, data)"
    )
    db.commit()
    db.close()


def _replay_error(path) -> JournalCorrupted:
    journal = SQLiteJournal(path, CODEC)
    try:
        with pytest.raises(JournalCorrupted) as raised:
            journal.replay(PID)
        return raised.value
    finally:
        journal.close()


# --- checksums ---


def test_every_row_carries_the_checksum_of_what_it_stores(written):
    db = sqlite3.connect(written)
    for table in ("events", "snapshots"):
        rows = db.execute(f"SELECT persistence_id, sequence_nr, type, version, data, checksum FROM {table}")
        for pid, sequence_nr, type_name, version, data, checksum in rows:
            assert isinstance(checksum, int) and -(2**63) <= checksum < 2**63
            assert checksum == row_checksum(pid, sequence_nr, type_name, version, data)
    db.close()


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE events SET data = replace(data, '13.10', '12.10') WHERE sequence_nr = 2",  # an amount
        "UPDATE events SET data = replace(data, '\"n\":50', '\"n\":90') WHERE sequence_nr = 2",  # a quantity
        "UPDATE events SET data = replace(data, 'captured', 'refunded') WHERE sequence_nr = 2",
        "UPDATE events SET version = 0 WHERE sequence_nr = 2",
        "UPDATE events SET checksum = 0 WHERE sequence_nr = 2",  # a row written without one
        "UPDATE events SET checksum = 'abc' WHERE sequence_nr = 2",
        "UPDATE events SET checksum = checksum + 1 WHERE sequence_nr = 2",
    ],
    ids=["amount", "quantity", "text", "version", "no checksum", "checksum not a number", "checksum changed"],
)
def test_a_changed_event_stops_replay_naming_id_and_sequence_nr(written, edit):
    execute_sql(written, edit)
    error = _replay_error(written)
    assert (error.persistence_id, error.sequence_nr) == (PID, 2)
    assert str(error).startswith(f"{PID} #2: event: ")
    assert "checksum does not match" in str(error)


def test_events_swapped_between_sequence_numbers_are_caught(written):
    execute_sql(
        written,
        "UPDATE events SET sequence_nr = -1 WHERE sequence_nr = 1",
        "UPDATE events SET sequence_nr = 1 WHERE sequence_nr = 3",
        "UPDATE events SET sequence_nr = 3 WHERE sequence_nr = -1",
    )
    error = _replay_error(written)
    assert (error.persistence_id, error.sequence_nr, "checksum" in str(error)) == (PID, 1, True)


def test_an_event_copied_to_another_stream_is_caught(written):
    execute_sql(
        written,
        "INSERT INTO events SELECT 'p-8', sequence_nr, timestamp, type, version, data, checksum "
        "FROM events WHERE persistence_id = 'p-7'",
        "INSERT INTO streams VALUES ('p-8', 3, 0)",
    )
    journal = SQLiteJournal(written, CODEC)
    try:
        with pytest.raises(JournalCorrupted, match="p-8 #1: event: checksum does not match"):
            journal.replay("p-8")
    finally:
        journal.close()


def test_a_changed_snapshot_is_refused_not_used(written):
    execute_sql(written, "UPDATE snapshots SET data = replace(data, '13.10', '12.10')")
    journal = SQLiteJournal(written, CODEC)
    try:
        with pytest.raises(JournalCorrupted, match=r"p-7 #2: snapshot: checksum does not match") as raised:
            journal.load_snapshot(PID)
        assert (raised.value.persistence_id, raised.value.sequence_nr) == (PID, 2)
        assert journal.load_snapshot(PID, max_sequence_nr=1) is None  # nothing older to fall back on
    finally:
        journal.close()


@pytest.mark.parametrize(
    ("before", "after", "read"),
    [
        (b"captured 13.10", b"captured 12.10", "replay"),  # a digit in an event
        (b"captured 13.10", b"captured 13.1O", "replay"),  # a letter for a digit: JSON stays valid
        (b'"n":50,', b'"n":90,', "replay"),
        (b'{"$decimal":"13.10"}', b'{"$decimal":"18.10"}', "snapshot"),
    ],
    ids=["event digit", "event letter", "event quantity", "snapshot digit"],
)
def test_bytes_flipped_in_the_raw_file_are_caught(written, before, after, read):
    data = written.read_bytes()
    assert not written.with_name(written.name + "-wal").exists()  # all of it is in the file itself
    assert data.count(before) == 1
    written.write_bytes(data.replace(before, after))
    journal = SQLiteJournal(written, CODEC)  # still a sound SQLite file
    try:
        with pytest.raises(JournalCorrupted, match="checksum does not match") as raised:
            journal.replay(PID) if read == "replay" else journal.load_snapshot(PID)
        assert (raised.value.persistence_id, raised.value.sequence_nr) == (PID, 2)
    finally:
        journal.close()


def test_a_row_that_neither_decodes_nor_matches_says_both(written):
    execute_sql(written, "UPDATE events SET type = 'Vanished' WHERE sequence_nr = 2")
    error = _replay_error(written)
    assert str(error).startswith("p-7 #2: event: unknown type 'Vanished'")
    assert "checksum does not match" in str(error)


def _order_journal(path):
    with OrderSystem(journal_path=path, stock={1: 50}, snapshot_every=None) as system:
        assert system.place_order(make_request("a", [(1, 1)], amount="13.10"), timeout=5)


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (
            "UPDATE events SET data = replace(data, '13.10', '12.10') WHERE persistence_id = 'payment'",
            r"payment #1: event: checksum does not match",
        ),
        (
            "UPDATE events SET data = replace(data, '[1,50]', '[1,90]') WHERE persistence_id = 'inventory'",
            r"inventory #1: event: checksum does not match",
        ),
    ],
    ids=["captured amount", "stocked quantity"],
)
def test_a_changed_journal_stops_the_order_system_at_start(path, edit, error):
    _order_journal(path)
    execute_sql(path, edit)
    _assert_start_refused(path, error)


def _assert_start_refused(path, error):
    """Starting an order system on the journal raises JournalCorrupted matching `error`, twice:
    the failed start leaves no thread running and the journal closed, not locked."""
    threads_before = set(threading.enumerate())
    for _ in range(2):
        with pytest.raises(JournalCorrupted, match=error):
            OrderSystem(journal_path=path).start()
        assert set(threading.enumerate()) <= threads_before, "a failed start left threads running"


# --- any decode failure is JournalCorrupted, naming its row ---


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ('{"n":1,"note":{"$decimal":"12.3x4"}}', r"malformed \$decimal"),
        ('{"n":1,"note":{"$decimal":12.34}}', r"malformed \$decimal"),  # a number, not the string written
        ('{"n":1,"note":{"$decimal":"1","x":2}}', r"malformed \$decimal"),
        ('{"n":1,"note":{"$set":5}}', r"malformed \$set"),
        ('{"n":1,"note":{"$set":[{"$set":[]}]}}', r"unhashable"),
        ('{"n":1,"note":{"$dict":[[1,2,3]]}}', r"malformed \$dict"),
        ('{"n":1,"note":{"$dict":{"a":1}}}', r"malformed \$dict"),
        ('{"n":1,"note":{"$type":["Happened"]}}', r"unknown type \['Happened'\]"),
        ('{"n":1,"note":{"$type":"Happened","m":2}}', r"fields do not fit"),
        ('{"note":"x"}', r"fields do not fit"),  # a missing field
        ('{"n":1,"note":"x","extra":1}', r"fields do not fit"),
        ('{"n":1,"note":{"odd":1}}', r"untagged object"),
    ],
)
def test_stored_data_that_does_not_decode_is_journal_corrupted(written, data, problem):
    execute_sql(written, f"UPDATE events SET data = '{data}' WHERE sequence_nr = 2")
    _reseal(written)  # the checksum matches: written so, not changed since
    error = _replay_error(written)
    assert (error.persistence_id, error.sequence_nr) == (PID, 2)
    assert str(error).startswith("p-7 #2: event: ")
    assert "checksum" not in str(error)
    with pytest.raises(SerializationError, match=problem):
        CODEC.decode("Happened", 1, data)


def test_a_malformed_snapshot_decimal_is_journal_corrupted(written):
    execute_sql(written, "UPDATE snapshots SET data = replace(data, '13.10', '13.1x0')")
    _reseal(written, "snapshots")
    journal = SQLiteJournal(written, CODEC)
    try:
        with pytest.raises(JournalCorrupted, match=r"p-7 #2: snapshot: malformed \$decimal"):
            journal.load_snapshot(PID)
    finally:
        journal.close()


def test_a_failing_upcaster_is_journal_corrupted():
    @dataclass(frozen=True)
    class Paid:
        amount: Decimal

    codec = EventCodec()
    codec.register(Paid, version=2, upcast=lambda version, fields: {"amount": fields["cents"]})
    with pytest.raises(SerializationError, match="KeyError") as raised:
        codec.decode("Paid", 1, '{"euros": 5}')
    assert isinstance(raised.value.__cause__, KeyError)


def test_a_malformed_decimal_stops_the_order_system_naming_its_row(path):
    _order_journal(path)
    execute_sql(
        path, "UPDATE events SET data = replace(data, '13.10', '13.1x0') WHERE persistence_id = 'payment'"
    )
    _reseal(path)
    with pytest.raises(JournalCorrupted, match=r"payment #1: event: malformed \$decimal"):
        OrderSystem(journal_path=path).start()


# --- schema version ---

# The schema as the library wrote it before checksums (schema version 0).
OLD_SCHEMA = """
CREATE TABLE streams (
    persistence_id TEXT PRIMARY KEY,
    highest_sequence_nr INTEGER NOT NULL,
    deleted_to INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE events (
    persistence_id TEXT NOT NULL,
    sequence_nr INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (persistence_id, sequence_nr)
) WITHOUT ROWID;
CREATE TABLE snapshots (
    persistence_id TEXT NOT NULL,
    sequence_nr INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (persistence_id, sequence_nr)
) WITHOUT ROWID;
"""


def _old_journal(path):
    """A journal as the library wrote it before checksums: p-7 #1..3, a snapshot at #2, #1 deleted."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")  # as the library sets it
    db.executescript(OLD_SCHEMA)
    db.executemany(
        "INSERT INTO events VALUES (?, ?, 1700000000.5, 'Happened', 1, ?)",
        [(PID, 2, '{"n":50,"note":"captured 13.10"}'), (PID, 3, '{"n":3,"note":""}')],
    )
    db.execute("INSERT INTO streams VALUES (?, 3, 1)", (PID,))
    db.execute(
        "INSERT INTO snapshots VALUES (?, 2, 1700000000.5, 'Counter', 1, ?)",
        (PID, '{"total":2,"seen":{"$dict":[["amount",{"$decimal":"13.10"}]]}}'),
    )
    db.commit()
    db.close()


def _user_version(path) -> int:
    db = sqlite3.connect(path)
    try:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        db.close()


def test_a_new_journal_records_its_schema_version(path):
    SQLiteJournal(path, CODEC).close()
    assert SCHEMA_VERSION == 1
    assert _user_version(path) == SCHEMA_VERSION


def test_a_journal_from_before_checksums_is_migrated_and_keeps_working(path, capsys):
    _old_journal(path)
    assert inspect([str(path)]) == 0  # the inspector reads it as it is, and changes nothing
    assert "checksums: none stored (schema version 0)" in capsys.readouterr().out
    assert _user_version(path) == 0

    journal = SQLiteJournal(path, CODEC)
    try:
        assert [(e.sequence_nr, e.event) for e in journal.replay(PID)] == [
            (2, Happened(50, "captured 13.10")),
            (3, Happened(3)),
        ]
        assert journal.load_snapshot(PID).snapshot == Counter(2, {"amount": Decimal("13.10")})
        assert journal.append(PID, [Happened(4)], 3) == 4
        journal.save_snapshot(PID, 4, Counter(4, {}))
    finally:
        journal.close()
    assert _user_version(path) == SCHEMA_VERSION
    db = sqlite3.connect(path)
    columns = [row[1] for row in db.execute("PRAGMA table_info(events)")]
    rows = db.execute(
        "SELECT persistence_id, sequence_nr, type, version, data, checksum FROM events"
    ).fetchall()
    db.close()
    assert columns[-1] == "checksum" and len(rows) == 3
    assert all(checksum == row_checksum(*row) for *row, checksum in rows)

    assert inspect([str(path)]) == 0
    assert "checksums: every event and snapshot matches" in capsys.readouterr().out
    execute_sql(path, "UPDATE events SET data = replace(data, '13.10', '12.10')")  # now it is caught
    assert _replay_error(path).sequence_nr == 2
    journal = SQLiteJournal(path, CODEC)  # reopening a migrated journal changes nothing
    journal.close()
    assert _user_version(path) == SCHEMA_VERSION


def test_an_order_journal_from_before_checksums_is_migrated(path):
    _order_journal(path)
    with OrderSystem(journal_path=path) as system:
        before = (system.orders(), system.inventory(), system.payments())
    execute_sql(  # back to the old schema, as a journal written before this version would be
        path,
        "ALTER TABLE events DROP COLUMN checksum",
        "ALTER TABLE snapshots DROP COLUMN checksum",
        "PRAGMA user_version = 0",
    )
    with OrderSystem(journal_path=path) as system:
        assert (system.orders(), system.inventory(), system.payments()) == before
        assert system.place_order(make_request("b", [(1, 1)]), timeout=5)
    assert _user_version(path) == SCHEMA_VERSION


def test_a_failed_migration_leaves_the_old_journal_as_it_was(path, monkeypatch):
    _old_journal(path)
    before = path.read_bytes()
    monkeypatch.setattr(sqlite_module, "_MIGRATION_TO_1", (*sqlite_module._MIGRATION_TO_1, "NOT SQL"))
    with pytest.raises(sqlite3.OperationalError):
        SQLiteJournal(path, CODEC)
    assert _user_version(path) == 0
    monkeypatch.undo()
    assert path.read_bytes() == before
    journal = SQLiteJournal(path, CODEC)  # and the next open migrates it
    try:
        assert journal.highest_sequence_nr(PID) == 3
    finally:
        journal.close()
    assert _user_version(path) == SCHEMA_VERSION


def _newer(path, *statements):
    SQLiteJournal(path, CODEC).close()
    execute_sql(path, *statements)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("statements", "problem"),
    [
        (["PRAGMA user_version = 99"], r"schema version is 99 .*writes version 1: made by a newer"),
        (["PRAGMA user_version = -1"], r"schema version is -1 .*writes version 1"),
        (
            ["ALTER TABLE events ADD COLUMN region TEXT NOT NULL DEFAULT 'eu'"],
            r"events table has columns.*region",
        ),
        (
            ["ALTER TABLE snapshots DROP COLUMN checksum"],
            r"snapshots table lacks columns of schema version 1 \(checksum\)",
        ),
        (["ALTER TABLE events ADD COLUMN checksum2 TEXT", "PRAGMA user_version = 0"], r"checksum2"),
    ],
    ids=["user_version 99", "user_version -1", "extra column", "missing column", "version 0, new columns"],
)
def test_a_journal_of_an_unknown_schema_is_refused_and_left_as_it_was(path, statements, problem):
    before = _newer(path, *statements)
    threads_before = set(threading.enumerate())
    with pytest.raises(NotAJournal, match=problem) as refused:
        SQLiteJournal(path, CODEC)
    assert isinstance(refused.value, JournalCorrupted) and str(path) in str(refused.value)
    assert path.read_bytes() == before
    assert set(threading.enumerate()) == threads_before


def test_the_inspector_refuses_a_newer_schema(path, capsys):
    _newer(path, "PRAGMA user_version = 99")
    assert inspect([str(path)]) == 2
    assert "schema version 99" in capsys.readouterr().err


# --- the inspector shows what does not match ---


def test_the_inspector_names_changed_rows(written, capsys):
    execute_sql(
        written,
        "UPDATE events SET data = replace(data, '13.10', '12.10')",
        "UPDATE snapshots SET data = replace(data, '13.10', '12.10')",
    )
    assert inspect([str(written)]) == 1
    out = capsys.readouterr().out
    assert "checksums: 2 rows do NOT match" in out
    assert "event p-7 #2" in out and "snapshot p-7 #2" in out
    assert inspect([str(written), PID]) == 0
    lines = capsys.readouterr().out.splitlines()
    marked = [line for line in lines if "CHECKSUM DOES NOT MATCH" in line]
    assert len(marked) == 1 and "#2" in marked[0] and "12.10" in marked[0]


def test_the_inspector_shows_unreadable_json_instead_of_failing(written, capsys):
    execute_sql(written, "UPDATE events SET data = '{not json' WHERE sequence_nr = 2")
    assert inspect([str(written), PID]) == 0
    out = capsys.readouterr().out
    assert "(unreadable JSON)" in out and "CHECKSUM DOES NOT MATCH" in out


# --- stored text that is not valid UTF-8 ---

# SQL that puts the byte 0xFF (never valid in UTF-8) into a stored text, as a damaged file or a
# hostile edit can: SQLite stores it as given, and Python's sqlite3 refuses the whole result.
FF = "CAST(X'FF' AS TEXT)"
DATA_FF = f"replace(data, '13.10', '1' || {FF} || '.10')"  # "13.10" -> "1\xff.10"
NOT_UTF8_EDITS = {
    "event data": f"UPDATE events SET data = {DATA_FF} WHERE sequence_nr = 2",
    "event type": f"UPDATE events SET type = 'Happ' || {FF} || 'ned' WHERE sequence_nr = 2",
    "snapshot data": f"UPDATE snapshots SET data = {DATA_FF}",
    "snapshot type": f"UPDATE snapshots SET type = 'Coun' || {FF} || 'er'",
}


def _offset_of_ff(path, table, column) -> int:
    db = sqlite3.connect(path)
    db.text_factory = bytes
    try:
        (value,) = db.execute(f"SELECT {column} FROM {table} WHERE sequence_nr = 2").fetchone()
    finally:
        db.close()
    return value.index(b"\xff")


@pytest.mark.parametrize("edit", NOT_UTF8_EDITS, ids=list(NOT_UTF8_EDITS))
def test_a_stored_text_that_is_not_utf8_is_journal_corrupted_naming_its_row(written, edit):
    execute_sql(written, NOT_UTF8_EDITS[edit])
    what, column = edit.split()
    offset = _offset_of_ff(written, what + "s", column)
    journal = SQLiteJournal(written, CODEC)
    try:
        with pytest.raises(JournalCorrupted) as raised:
            journal.replay(PID) if what == "event" else journal.load_snapshot(PID)
        assert (raised.value.persistence_id, raised.value.sequence_nr) == (PID, 2)
        assert str(raised.value) == (
            f"{PID} #2: {what}: stored {column} is not valid UTF-8 (byte 0xff at offset {offset}), "
            "changed after it was written"
        )
        # The reader is left as it was: the rows around the damaged one still read.
        assert [e.event for e in journal.replay(PID, to_sequence_nr=1)] == [Happened(1)]
        assert [e.event for e in journal.replay(PID, from_sequence_nr=3)] == [Happened(3)]
        if what == "snapshot":
            assert journal.load_snapshot(PID, max_sequence_nr=1) is None  # nothing older used instead
        else:
            assert journal.load_snapshot(PID).snapshot == Counter(2, {"amount": Decimal("13.10")})
    finally:
        journal.close()


@pytest.mark.parametrize(
    ("before", "after", "read"),
    [
        (b"captured 13.10", b"captured \xff3.10", "replay"),
        (b'{"$decimal":"13.10"}', b'{"$decimal":"\xff3.10"}', "snapshot"),
    ],
    ids=["event", "snapshot"],
)
def test_a_byte_flipped_to_0xff_in_the_raw_file_is_caught(written, before, after, read):
    data = written.read_bytes()
    assert data.count(before) == 1
    written.write_bytes(data.replace(before, after))
    journal = SQLiteJournal(written, CODEC)
    try:
        with pytest.raises(JournalCorrupted, match=r"p-7 #2: \w+: stored data is not valid UTF-8") as raised:
            journal.replay(PID) if read == "replay" else journal.load_snapshot(PID)
        assert (raised.value.persistence_id, raised.value.sequence_nr) == (PID, 2)
    finally:
        journal.close()


def test_a_stream_id_that_is_not_utf8_is_journal_corrupted(written):
    execute_sql(written, f"UPDATE streams SET persistence_id = 'p-' || {FF}")
    journal = SQLiteJournal(written, CODEC)
    try:
        for read in (journal.persistence_ids, lambda: journal.open_persistence_ids("p-", ())):
            with pytest.raises(JournalCorrupted) as raised:
                read()
            assert (raised.value.persistence_id, raised.value.sequence_nr) == ("p-\\xff", 0)
            assert "stream: stored persistence id is not valid UTF-8 (byte 0xff at offset 2)" in str(
                raised.value
            )
        assert journal.persistence_ids("q") == []  # the reader is left as it was
    finally:
        journal.close()


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (
            f"UPDATE events SET data = {DATA_FF} WHERE persistence_id = 'payment'",
            r"payment #1: event: stored data is not valid UTF-8 \(byte 0xff at offset \d+\)",
        ),
        (  # the saga's last event no longer reads as final: the saga runtime replays it at start
            f"UPDATE events SET type = 'Saga' || {FF} || 'Completed' WHERE type = 'SagaCompleted'",
            r"saga:order:a #\d+: event: stored type is not valid UTF-8",
        ),
        (
            f"UPDATE streams SET persistence_id = 'saga:order:' || {FF} WHERE persistence_id LIKE 'saga:%'",
            r"saga:order:\\xff #0: stream: stored persistence id is not valid UTF-8",
        ),
    ],
    ids=["payment data", "saga event type", "saga stream id"],
)
def test_text_that_is_not_utf8_stops_the_order_system_at_start(path, edit, error):
    _order_journal(path)
    execute_sql(path, edit)
    _assert_start_refused(path, error)


def test_the_inspector_marks_text_that_is_not_utf8_and_shows_the_rest(written, capsys):
    execute_sql(written, NOT_UTF8_EDITS["event data"], NOT_UTF8_EDITS["snapshot type"])
    assert inspect([str(written)]) == 1
    out = capsys.readouterr().out
    assert "journal" in out and "p-7" in out  # the summary, not a refusal
    assert "checksums: 2 rows do NOT match" in out
    assert "event p-7 #2: stored data is not valid UTF-8 (byte 0xff at offset 26)" in out
    assert "snapshot p-7 #2: stored type is not valid UTF-8 (byte 0xff at offset 4)" in out

    assert inspect([str(written), PID]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [line for line in lines if f"{PID} #" in line]
    assert len(shown) == 3
    assert "STORED DATA IS NOT VALID UTF-8 (byte 0xff at offset 26)" in shown[1]
    assert "captured 1\\\\xff.10" in shown[1]  # the bytes as stored, escaped
    assert "NOT VALID" not in shown[0] + shown[2] and "CHECKSUM" not in shown[0] + shown[2]

    assert inspect(["--json", str(written), PID]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    assert [e["checksum_matches"] for e in events] == [True, False, True]
    assert events[1]["not_valid_utf8"] == "stored data is not valid UTF-8 (byte 0xff at offset 26)"
    assert events[1]["unreadable_data"] == '{"n":50,"note":"captured 1\\xff.10"}'
    assert "not_valid_utf8" not in events[0]


def test_the_inspector_shows_a_damaged_row_that_names_the_id(path, capsys):
    _order_journal(path)
    execute_sql(path, f"UPDATE events SET data = {DATA_FF} WHERE persistence_id = 'payment'")
    assert inspect([str(path), "a"]) == 0
    out = capsys.readouterr().out
    marked = [line for line in out.splitlines() if "NOT VALID UTF-8" in line]
    assert len(marked) == 1 and "payment #1" in marked[0]
    assert "saga:order:a #1" in out and "orders #1" in out


def test_the_inspector_names_a_stream_id_that_is_not_utf8(written, capsys):
    execute_sql(written, f"UPDATE streams SET persistence_id = 'p-' || {FF}")
    assert inspect(["--json", str(written)]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [s["persistence_id"] for s in document["streams"]] == ["p-\\xff"]
    assert document["checksums"]["mismatched"] == [
        {
            "table": "streams",
            "persistence_id": "p-\\xff",
            "sequence_nr": 3,
            "not_valid_utf8": "stored persistence id is not valid UTF-8 (byte 0xff at offset 2)",
        }
    ]


def test_a_snapshot_whose_stream_id_is_not_utf8_is_not_used_and_the_inspector_names_it(written, capsys):
    execute_sql(written, f"UPDATE snapshots SET persistence_id = 'p-' || {FF}")
    journal = SQLiteJournal(written, CODEC)
    try:
        assert journal.load_snapshot(PID) is None  # no longer p-7's: its state is replayed from its events
        assert [e.sequence_nr for e in journal.replay(PID)] == [1, 2, 3]
    finally:
        journal.close()
    assert inspect([str(written)]) == 1
    out = capsys.readouterr().out
    assert "snapshot p-\\xff #2: stored persistence id is not valid UTF-8 (byte 0xff at offset 2)" in out


def test_a_journal_from_before_checksums_with_text_that_is_not_utf8_is_migrated(path, capsys):
    _old_journal(path)
    execute_sql(path, f"UPDATE events SET data = {DATA_FF} WHERE sequence_nr = 2")
    assert inspect([str(path), PID]) == 0  # version 0: no checksums, but the damaged text is marked
    assert "STORED DATA IS NOT VALID UTF-8 (byte 0xff at offset 26)" in capsys.readouterr().out
    journal = SQLiteJournal(path, CODEC)  # migrated: the damaged row gets no checksum, the others theirs
    try:
        with pytest.raises(JournalCorrupted, match=r"p-7 #2: event: stored data is not valid UTF-8"):
            journal.replay(PID)
        assert [e.event for e in journal.replay(PID, from_sequence_nr=3)] == [Happened(3)]
        assert journal.load_snapshot(PID).snapshot == Counter(2, {"amount": Decimal("13.10")})
    finally:
        journal.close()
    assert _user_version(path) == SCHEMA_VERSION
