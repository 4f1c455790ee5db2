"""What the SQLite backend adds to the contract: durability settings, group
commit, a private file, and loud failure on bad data."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from dataclasses import dataclass

import pytest

from saga_actors.persistence import EventCodec, JournalCorrupted, SerializationError, SQLiteJournal
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
