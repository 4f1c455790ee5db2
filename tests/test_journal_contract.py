"""One contract every journal backend passes (after the Akka persistence TCK).

JournalSpec and SnapshotStoreSpec, run against each backend; a new backend
is added to BACKENDS and must pass all of it. PostgreSQL runs it when
SAGA_ACTORS_TEST_POSTGRES names a server (skipped otherwise); its fenced
handles are held to tests/test_lease_contract.py.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from decimal import Decimal

import pytest

from saga_actors.persistence import (
    ConcurrencyError,
    EventCodec,
    InMemoryJournal,
    PostgresJournal,
    SQLiteJournal,
)


@dataclass(frozen=True)
class Happened:
    n: int
    note: str = ""


@dataclass
class Counter:
    total: int
    seen: dict[str, Decimal]


CODEC = EventCodec()
CODEC.register_all(Happened, Counter)


def sqlite_backend(request, tmp_path):
    return SQLiteJournal(tmp_path / "journal.db", CODEC)


def memory_backend(request, tmp_path):
    return InMemoryJournal()


def postgres_backend(request, tmp_path):
    """A PostgresJournal on a fresh database (skipped without SAGA_ACTORS_TEST_POSTGRES)."""
    return PostgresJournal(request.getfixturevalue("postgres_url"), CODEC)


BACKENDS = {
    "memory": memory_backend,
    "sqlite": sqlite_backend,
    "postgres": postgres_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def journal(request, tmp_path):
    backend = BACKENDS[request.param](request, tmp_path)
    yield backend
    backend.close()


PID = "p-1"


@pytest.fixture
def written(journal):
    """p-1 holds events 1..5 (written in two batches)."""
    journal.append(PID, [Happened(1), Happened(2)], 0)
    journal.append(PID, [Happened(3), Happened(4), Happened(5)], 2)
    return journal


def numbers(events):
    return [e.sequence_nr for e in events]


# --- JournalSpec ---


def test_replay_all_events(written):
    events = written.replay(PID)
    assert numbers(events) == [1, 2, 3, 4, 5]
    assert [e.event for e in events] == [Happened(n) for n in range(1, 6)]
    assert all(e.persistence_id == PID and e.timestamp > 0 for e in events)


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ({"from_sequence_nr": 3}, [3, 4, 5]),  # lower bound
        ({"to_sequence_nr": 3}, [1, 2, 3]),  # upper bound
        ({"max_count": 3}, [1, 2, 3]),  # count limit
        ({"from_sequence_nr": 2, "to_sequence_nr": 3}, [2, 3]),  # both bounds
        ({"from_sequence_nr": 2, "to_sequence_nr": 5, "max_count": 2}, [2, 3]),  # bounds and limit
        ({"from_sequence_nr": 2, "to_sequence_nr": 2}, [2]),  # lower = upper
        ({"max_count": 1}, [1]),  # count limit 1
        ({"max_count": 0}, []),  # limit 0
        ({"from_sequence_nr": 3, "to_sequence_nr": 2}, []),  # lower > upper
        ({"from_sequence_nr": 6}, []),  # past the end
    ],
)
def test_replay_bounds(written, bounds, expected):
    assert numbers(written.replay(PID, **bounds)) == expected


def test_nothing_for_an_id_never_written(written):
    assert written.replay("never") == []
    assert written.highest_sequence_nr("never") == 0


def test_deleted_events_are_not_replayed(written):
    written.delete_to(PID, 3)
    assert numbers(written.replay(PID)) == [4, 5]
    assert numbers(written.replay(PID, from_sequence_nr=2, to_sequence_nr=4)) == [4]


def test_highest_sequence_nr_is_kept_after_deletion(written):
    written.delete_to(PID, 5)
    assert written.replay(PID) == []
    assert written.highest_sequence_nr(PID) == 5
    assert written.append(PID, [Happened(6)], 5) == 6


def test_append_returns_the_new_highest_and_refuses_a_gap_or_a_stale_writer(journal):
    assert journal.append(PID, [Happened(1)], 0) == 1
    with pytest.raises(ConcurrencyError):
        journal.append(PID, [Happened(9)], 0)  # a second writer that saw nothing
    with pytest.raises(ConcurrencyError):
        journal.append(PID, [Happened(9)], 5)  # a gap
    assert numbers(journal.replay(PID)) == [1]


def test_a_refused_batch_writes_none_of_its_events(journal):
    journal.append(PID, [Happened(1)], 0)
    with pytest.raises(ConcurrencyError):
        journal.append(PID, [Happened(2), Happened(3)], 0)
    assert [e.event for e in journal.replay(PID)] == [Happened(1)]


def test_persistence_ids_by_prefix(journal):
    for pid in ("saga:b", "saga:a", "orders", "sagax"):
        journal.append(pid, [Happened(1)], 0)
    assert journal.persistence_ids("saga:") == ["saga:a", "saga:b"]
    assert journal.persistence_ids() == ["orders", "saga:a", "saga:b", "sagax"]


def test_values_round_trip(journal):
    state = Counter(3, {"a": Decimal("19.98")})
    journal.append(PID, [Happened(1, "é ✓")], 0)
    assert journal.replay(PID)[0].event == Happened(1, "é ✓")
    journal.save_snapshot(PID, 1, state)
    assert journal.load_snapshot(PID).snapshot == state


def test_concurrent_writers_lose_nothing(journal):
    def write(pid: str) -> None:
        for n in range(50):
            journal.append(pid, [Happened(n)], n)

    threads = [threading.Thread(target=write, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert [e.event.n for e in journal.replay(f"w{i}")] == list(range(50))


# --- SnapshotStoreSpec ---


def test_snapshot_most_recent(journal):
    journal.save_snapshot(PID, 1, Counter(1, {}))
    journal.save_snapshot(PID, 3, Counter(3, {}))
    selected = journal.load_snapshot(PID)
    assert (selected.sequence_nr, selected.snapshot) == (3, Counter(3, {}))


def test_snapshot_most_recent_under_a_bound(journal):
    for n in (1, 3, 5):
        journal.save_snapshot(PID, n, Counter(n, {}))
    assert journal.load_snapshot(PID, max_sequence_nr=4).sequence_nr == 3
    assert journal.load_snapshot(PID, max_sequence_nr=0) is None


def test_no_snapshot_for_an_unknown_id(journal):
    assert journal.load_snapshot("never") is None


def test_snapshot_saved_over_the_same_sequence_nr_replaces_it(journal):
    journal.save_snapshot(PID, 2, Counter(1, {}))
    journal.save_snapshot(PID, 2, Counter(2, {}))
    assert journal.load_snapshot(PID).snapshot == Counter(2, {})


def test_snapshot_is_a_copy_of_the_state_at_save_time(journal):
    state = Counter(1, {})
    journal.save_snapshot(PID, 1, state)
    state.total = 99
    state.seen["x"] = Decimal(1)
    assert journal.load_snapshot(PID).snapshot == Counter(1, {})


# --- asynchronous appends ---


def test_append_async_reports_each_append_in_order(journal):
    done: list[tuple[int | None, str | None]] = []
    finished = threading.Event()

    def callback(highest, error):
        done.append((highest, type(error).__name__ if error else None))
        if len(done) == 4:
            finished.set()

    journal.append_async(PID, [Happened(1)], 0, callback)
    journal.append_async(PID, [Happened(2), Happened(3)], 1, callback)
    journal.append_async(PID, [], 3, callback)  # a barrier
    journal.append_async(PID, [Happened(9)], 1, callback)  # stale: refused
    assert finished.wait(5)
    assert done == [(1, None), (3, None), (3, None), (None, "ConcurrencyError")]
    assert [e.event.n for e in journal.replay(PID)] == [1, 2, 3]


def test_flush_returns_after_earlier_async_writes(journal):
    journal.append_async(PID, [Happened(n) for n in range(100)], 0, lambda h, e: None)
    journal.flush()
    assert journal.highest_sequence_nr(PID) == 100


@dataclass(frozen=True)
class Finished:
    n: int


CODEC.register(Finished)


def test_open_persistence_ids_are_those_without_a_final_last_event(journal):
    journal.append("job:a", [Happened(1), Finished(2)], 0)
    journal.append("job:b", [Happened(1)], 0)
    journal.append("job:c", [Finished(1), Happened(2)], 0)
    journal.append("job:d", [Happened(1), Finished(2)], 0)
    journal.delete_to("job:d", 2)  # its last event is gone: it cannot be known finished
    journal.append("other", [Happened(1)], 0)
    assert journal.open_persistence_ids("job:", (Finished,)) == ["job:b", "job:c", "job:d"]


def test_delete_snapshots_removes_those_at_or_below_the_bound(journal):
    for n in (1, 3, 5):
        journal.save_snapshot(PID, n, Counter(n, {}))
    journal.delete_snapshots(PID, 3)
    assert journal.load_snapshot(PID).sequence_nr == 5
    assert journal.load_snapshot(PID, max_sequence_nr=4) is None
    journal.delete_snapshots(PID, 3)  # nothing left there: not an error
    journal.delete_snapshots("never", 10)
