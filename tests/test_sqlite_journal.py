"""What the SQLite backend adds to the contract: durability settings, group
commit, private files, and loud failure on bad data. (One writer per
journal: tests/test_journal_lock.py.)"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from saga_actors.persistence import (
    ConcurrencyError,
    EventCodec,
    JournalCorrupted,
    NotAJournal,
    SerializationError,
    SQLiteJournal,
)
from tests.test_journal_contract import CODEC, Happened


@pytest.fixture
def path(tmp_path):
    return tmp_path / "journal.db"


@pytest.fixture
def journal(path):
    journal = SQLiteJournal(path, CODEC)
    yield journal
    journal.close()


def test_defaults_are_wal_and_synchronous_full(journal, path):
    db = journal._writer
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_file_is_private_to_its_owner(journal, path):
    journal.append("p", [Happened(1)], 0)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _files_beside(path) -> dict[str, int]:
    """The journal's files and their modes (the journal, -wal, -shm, .lock)."""
    return {name: _mode(path.parent / name) for name in os.listdir(path.parent) if name.startswith(path.name)}


PRIVATE = {"journal.db": 0o600, "journal.db-wal": 0o600, "journal.db-shm": 0o600, "journal.db.lock": 0o600}


# 0: nothing taken off the modes asked for; 0o277: even the owner's write bit is.
UMASKS = pytest.mark.parametrize("umask", [0, 0o277], ids=["umask000", "umask277"])


@UMASKS
def test_new_journal_files_are_private_whatever_the_umask(path, umask):
    with _umask(umask):
        journal = SQLiteJournal(path, CODEC)
        try:
            journal.append("p", [Happened(1)], 0)
            assert _files_beside(path) == PRIVATE  # and no half-made file left beside it
        finally:
            journal.close()
    assert _mode(path) == _mode(f"{path}.lock") == 0o600


def test_existing_journal_readable_by_others_is_made_private(path):
    SQLiteJournal(path, CODEC).close()
    os.chmod(path, 0o644)
    os.chmod(f"{path}.lock", 0o644)
    with _umask(0):
        journal = SQLiteJournal(path, CODEC)
        try:
            journal.append("p", [Happened(1)], 0)
            assert _files_beside(path) == PRIVATE  # -wal and -shm take the journal's mode
        finally:
            journal.close()


def test_existing_wal_and_shm_readable_by_others_are_made_private(path):
    journal = SQLiteJournal(path, CODEC)
    journal.append("p", [Happened(1)], 0)
    journal.close()
    reader = sqlite3.connect(path)  # keeps -wal and -shm in place, as a crashed writer would
    try:
        assert reader.execute("SELECT count(*) FROM events").fetchone() == (1,)
        for companion in ("-wal", "-shm"):
            os.chmod(f"{path}{companion}", 0o644)
        with _umask(0):
            journal = SQLiteJournal(path, CODEC)
            try:
                assert _files_beside(path) == PRIVATE
                assert journal.highest_sequence_nr("p") == 1
            finally:
                journal.close()
    finally:
        reader.close()


@UMASKS
def test_missing_directories_are_created_private_whatever_the_umask(tmp_path, umask):
    parent_mode = _mode(tmp_path)
    path = tmp_path / "var" / "orders" / "journal.db"
    with _umask(umask):
        journal = SQLiteJournal(path, CODEC)
        try:
            journal.append("p", [Happened(1)], 0)
        finally:
            journal.close()
    assert _mode(tmp_path / "var") == _mode(tmp_path / "var" / "orders") == 0o700
    assert _mode(path) == _mode(f"{path}.lock") == 0o600
    assert _mode(tmp_path) == parent_mode  # a directory it did not create is not its to change


def test_empty_file_is_not_a_journal(path):
    path.touch()
    with pytest.raises(JournalCorrupted, match="empty file") as refused:
        SQLiteJournal(path, CODEC)
    assert isinstance(refused.value, NotAJournal)
    assert refused.value.path == str(path)
    assert str(path) in str(refused.value)
    assert path.stat().st_size == 0  # not turned into a new, empty journal
    path.unlink()  # only a missing file is created
    journal = SQLiteJournal(path, CODEC)
    assert journal.highest_sequence_nr("p") == 0
    journal.close()


def test_file_that_is_not_a_database_is_not_a_journal(path):
    path.write_text("order 1: confirmed\n" * 300)
    with pytest.raises(NotAJournal, match="not a SQLite database"):
        SQLiteJournal(path, CODEC)


def test_events_survive_reopening(path):
    first = SQLiteJournal(path, CODEC)
    first.append("p", [Happened(1), Happened(2)], 0)
    first.close()
    second = SQLiteJournal(path, CODEC)
    assert [e.event for e in second.replay("p")] == [Happened(1), Happened(2)]
    assert second.highest_sequence_nr("p") == 2
    second.close()


def test_events_are_json_with_type_name_and_version(journal, path):
    journal.append("p", [Happened(7, "x")], 0)
    row = sqlite3.connect(path).execute("SELECT type, version, data FROM events").fetchone()
    assert row == ("Happened", 1, '{"n":7,"note":"x"}')


def test_unregistered_values_are_refused_before_anything_is_written(journal):
    @dataclass(frozen=True)
    class Secret:
        number: str

    with pytest.raises(SerializationError, match="not registered"):
        journal.append("p", [Happened(1), Secret("4242424242424242")], 0)
    assert journal.highest_sequence_nr("p") == 0


def _corrupt(path, sql, *parameters):
    db = sqlite3.connect(path)
    db.execute(sql, parameters)
    db.commit()
    db.close()


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("UPDATE events SET data = '{not json' WHERE sequence_nr = 2", "unreadable JSON"),
        ("UPDATE events SET type = 'Vanished' WHERE sequence_nr = 2", "unknown type 'Vanished'"),
        ("UPDATE events SET version = 9 WHERE sequence_nr = 2", "newer than this code"),
        ("DELETE FROM events WHERE sequence_nr = 2", "event missing"),
    ],
)
def test_bad_data_stops_replay_naming_id_and_sequence_nr(journal, path, sql, problem):
    journal.append("p-7", [Happened(1), Happened(2), Happened(3)], 0)
    _corrupt(path, sql)
    with pytest.raises(JournalCorrupted, match=problem) as raised:
        journal.replay("p-7")
    assert (raised.value.persistence_id, raised.value.sequence_nr) == ("p-7", 2)
    assert "p-7 #2" in str(raised.value)


def test_missing_last_event_is_detected(journal, path):
    journal.append("p", [Happened(1), Happened(2)], 0)
    _corrupt(path, "DELETE FROM events WHERE sequence_nr = 2")
    with pytest.raises(JournalCorrupted, match="p #2"):
        journal.replay("p")


def test_older_versions_are_upcast():
    @dataclass(frozen=True)
    class Renamed:
        amount: int
        currency: str

    codec = EventCodec()
    codec.register(
        Renamed, version=2, upcast=lambda version, fields: {"amount": fields["cents"], "currency": "USD"}
    )
    assert codec.decode("Renamed", 1, '{"cents": 5}') == Renamed(5, "USD")
    assert codec.decode("Renamed", 2, '{"amount": 5, "currency": "EUR"}') == Renamed(5, "EUR")


def test_group_commit_puts_concurrent_appends_in_shared_transactions(journal):
    def write(pid: str) -> None:
        for n in range(40):
            journal.append(pid, [Happened(n)], n)

    threads = [threading.Thread(target=write, args=(f"w{i}",)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert journal.operations == 16 * 40
    assert journal.transactions < journal.operations / 2


def test_without_group_commit_each_append_is_its_own_transaction(path):
    journal = SQLiteJournal(path, CODEC, group_commit=False)
    threads = [
        threading.Thread(target=lambda i=i: [journal.append(f"w{i}", [Happened(n)], n) for n in range(10)])
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert journal.transactions == journal.operations == 40
    journal.close()


def test_closed_journal_refuses_writes(path):
    journal = SQLiteJournal(path, CODEC)
    journal.close()
    with pytest.raises(RuntimeError, match="closed"):
        journal.append("p", [Happened(1)], 0)


def test_the_writers_record_of_streams_is_bounded_and_still_refuses_a_wrong_sequence_number(path):
    journal = SQLiteJournal(path, CODEC, cached_streams=4)
    try:
        for i in range(10):  # more streams than the writer keeps in memory
            assert journal.append(f"s{i}", [Happened(i)], 0) == 1
        assert list(journal._highest) == ["s6", "s7", "s8", "s9"]  # the most recently written
        # s0 was dropped from the record: the file tells the writer where it stands.
        with pytest.raises(ConcurrencyError, match="expected sequence number 0, journal is at 1"):
            journal.append("s0", [Happened(0)], 0)
        assert journal.append("s0", [Happened(1)], 1) == 2
        assert list(journal._highest) == ["s7", "s8", "s9", "s0"]
        # Within one transaction too: two appends to a dropped stream, the second one stale.
        results: list = []
        done = threading.Event()

        def record(highest, error):
            results.append(highest if error is None else type(error).__name__)
            if len(results) == 2:
                done.set()

        journal.append_async("s1", [Happened(2)], 1, record)
        journal.append_async("s1", [Happened(3)], 1, record)
        assert done.wait(5)
        assert results == [2, "ConcurrencyError"]
        assert len(journal._highest) == 4
        assert [e.event for e in journal.replay("s1")] == [Happened(1), Happened(2)]
    finally:
        journal.close()


def test_cached_streams_must_be_positive(path):
    with pytest.raises(ValueError, match="cached_streams"):
        SQLiteJournal(path, CODEC, cached_streams=0)
