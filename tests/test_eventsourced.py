"""The event-sourced actor shell: nothing is told before it is durable."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time

import pytest

from saga_actors.actors.codec import order_codec
from saga_actors.actors.inventory import (
    CommitStock,
    GetStock,
    InventoryActor,
    InventoryState,
    ReleaseStock,
    ReserveStock,
    StockProducts,
    evolve,
)
from saga_actors.actors.validation import OrderItem
from saga_actors.persistence import InMemoryJournal, SQLiteJournal, wait_for_snapshots
from saga_actors.sagas.participant import GetState
from saga_actors.sagas.protocol import Correlation, Reply, Request
from saga_actors.sagas.retention import ExpireRetention


class GatedJournal(InMemoryJournal):
    """Holds asynchronous appends until the test opens the gate (or fails them)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list = []
        self.lock = threading.Lock()

    def append_async(self, persistence_id, events, expected_sequence_nr, on_done):
        with self.lock:
            self.held.append((persistence_id, list(events), expected_sequence_nr, on_done))

    def release(self, error: BaseException | None = None) -> None:
        with self.lock:
            held, self.held = self.held, []
        for persistence_id, events, expected, on_done in held:
            if error is not None:
                on_done(None, error)
            else:
                super().append_async(persistence_id, events, expected, on_done)


class Inbox:
    def __init__(self) -> None:
        self.messages: queue.Queue = queue.Queue()

    def tell(self, message) -> None:
        self.messages.put(message)


def reserve(order_id: str, inbox: Inbox) -> Request:
    return Request(ReserveStock(order_id, (OrderItem(1, 1),)), inbox, Correlation(order_id, "do", "r", 1))


def test_a_reply_waits_until_its_events_are_durable():
    journal = GatedJournal()
    journal.append("inventory", [], 0)
    actor = InventoryActor.start(journal)
    try:
        actor.ask(StockProducts(((1, 5),)))
        inbox = Inbox()
        actor.tell(reserve("o1", inbox))
        actor.tell(reserve("o2", inbox))
        time.sleep(0.05)
        assert inbox.messages.empty(), "replied before the events were written"
        assert journal.highest_sequence_nr("inventory") == 1  # only the stocking
        journal.release()
        replies = [inbox.messages.get(timeout=2), inbox.messages.get(timeout=2)]
        assert all(isinstance(r, Reply) and r.ok for r in replies)
        assert journal.highest_sequence_nr("inventory") == 3
    finally:
        actor.stop()


def test_a_failed_write_stops_the_actor_and_nothing_is_told():
    journal = GatedJournal()
    actor = InventoryActor.start(journal)
    actor.ask(StockProducts(((1, 5),)))
    inbox = Inbox()
    actor.tell(reserve("o1", inbox))
    time.sleep(0.02)
    journal.release(OSError("disk full"))
    deadline = time.monotonic() + 2
    while actor.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not actor.is_alive()
    assert inbox.messages.empty()


def test_superseded_snapshots_are_deleted_and_recovery_uses_the_newest(tmp_path):
    from saga_actors.actors.codec import order_codec
    from saga_actors.persistence import SQLiteJournal

    journal = SQLiteJournal(str(tmp_path / "j.db"), order_codec())
    try:
        actor = InventoryActor.start_recovered(journal, snapshot_every=3, timeout=10)
        try:
            actor.ask(StockProducts(((1, 100),)))
            inbox = Inbox()
            for i in range(20):  # 20 reservations: a snapshot every 3 events
                actor.tell(reserve(f"o{i}", inbox))
            replies = [inbox.messages.get(timeout=5) for _ in range(20)]
            assert all(r.ok for r in replies)
        finally:
            actor.stop()
        journal.flush()
        assert wait_for_snapshots(5)
        reader = sqlite3.connect(tmp_path / "j.db")
        try:
            query = (
                "SELECT sequence_nr FROM snapshots WHERE persistence_id = 'inventory' ORDER BY sequence_nr"
            )
            kept = [row[0] for row in reader.execute(query)]
        finally:
            reader.close()
        assert 1 <= len(kept) <= 2, kept  # the newest and the one before it, not one per 3 events
        again = InventoryActor.start_recovered(journal, snapshot_every=3, timeout=10)
        try:
            stock = again.ask(GetStock())
            assert stock[1].reserved == 20 and stock[1].on_hand == 100
        finally:
            again.stop()
    finally:
        journal.close()


def replayed(journal, to_sequence_nr: int) -> InventoryState:
    """The inventory's state rebuilt from its events 1..to_sequence_nr alone."""
    state = InventoryState()
    for stored in journal.replay("inventory", to_sequence_nr=to_sequence_nr):
        state = evolve(state, stored.event)
    return state


class SlowSnapshots(InMemoryJournal):
    """A snapshot write blocks until the test releases it (a huge state on a slow disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.released = threading.Event()

    def save_snapshot(self, persistence_id, sequence_nr, snapshot):
        self.writing.set()
        assert self.released.wait(10), "the test never released the snapshot write"
        super().save_snapshot(persistence_id, sequence_nr, snapshot)


def test_the_actor_keeps_serving_while_a_snapshot_is_written():
    journal = SlowSnapshots()
    actor = InventoryActor.start(journal, snapshot_every=2)
    try:
        actor.ask(StockProducts(((1, 100),)))
        inbox = Inbox()
        actor.tell(reserve("o1", inbox))  # event 2: a snapshot is due
        assert inbox.messages.get(timeout=2).ok
        assert journal.writing.wait(5)
        # The snapshot write is stuck; the actor answers requests and queries meanwhile.
        actor.tell(reserve("o2", inbox))
        actor.tell(reserve("o3", inbox))
        assert inbox.messages.get(timeout=2).ok and inbox.messages.get(timeout=2).ok
        assert actor.ask(GetStock(), timeout=2)[1].reserved == 3
        assert journal.load_snapshot("inventory") is None
    finally:
        journal.released.set()
    try:
        assert wait_for_snapshots(5)
        snapshot = journal.load_snapshot("inventory")
        # Taken at event 2, while the state went on to event 4: it holds event 2's state.
        assert snapshot is not None and snapshot.sequence_nr in (2, 4)
        assert snapshot.snapshot == replayed(journal, snapshot.sequence_nr)
        assert len(snapshot.snapshot.reservations) == snapshot.sequence_nr - 1
    finally:
        actor.stop()


def test_a_snapshot_is_not_written_before_the_events_it_covers():
    journal = GatedJournal()
    journal.append("inventory", [], 0)
    actor = InventoryActor.start(journal, snapshot_every=1)
    try:
        actor.ask(StockProducts(((1, 5),)))  # written at once (a synchronous append)
        inbox = Inbox()
        actor.tell(reserve("o1", inbox))  # held by the journal
        assert actor.ask(GetStock(), timeout=2)[1].reserved == 1  # applied, not yet durable
        journal.flush()
        assert wait_for_snapshots(5)
        assert journal.highest_sequence_nr("inventory") == 1
        assert journal.load_snapshot("inventory") is None  # even event 1's waits behind the barrier
        journal.release()  # the events, each followed by its snapshot's barrier
        assert inbox.messages.get(timeout=2).ok
        assert wait_for_snapshots(5)
        snapshot = journal.load_snapshot("inventory")
        assert snapshot is not None and snapshot.sequence_nr == 2
        assert snapshot.snapshot == replayed(journal, 2)
    finally:
        actor.stop()


def test_a_failed_snapshot_write_is_logged_and_the_actor_carries_on(caplog):
    class FullDisk(InMemoryJournal):
        def save_snapshot(self, persistence_id, sequence_nr, snapshot):
            raise OSError("disk full")

    journal = FullDisk()
    actor = InventoryActor.start(journal, snapshot_every=1)
    try:
        with caplog.at_level(logging.WARNING, logger="saga_actors.persistence.eventsourced"):
            actor.ask(StockProducts(((1, 5),)))
            inbox = Inbox()
            actor.tell(reserve("o1", inbox))
            assert inbox.messages.get(timeout=2).ok
            assert wait_for_snapshots(5)
        assert "not written (OSError: disk full)" in caplog.text
        assert actor.is_alive() and actor.ask(GetStock(), timeout=2)[1].reserved == 1
        assert journal.highest_sequence_nr("inventory") == 2  # the events are all there
    finally:
        actor.stop()


@pytest.mark.parametrize("every", [1, 7])
def test_every_snapshot_taken_while_serving_equals_the_replay_of_its_events(tmp_path, every):
    journal = SQLiteJournal(str(tmp_path / "j.db"), order_codec())
    actor = InventoryActor.start_recovered(journal, snapshot_every=every, timeout=10)
    try:
        actor.ask(StockProducts(((1, 1000), (2, 1000))))
        inbox = Inbox()
        now = 1_800_000_000.0
        for i in range(60):
            actor.tell(reserve(f"o{i}", inbox))
            settle = CommitStock(f"o{i}") if i % 3 else ReleaseStock(f"o{i}")
            actor.tell(Request(settle, inbox, Correlation(f"o{i}", "do", "s", 1)))
            if i % 10 == 9:  # forget what finished a window ago, in the middle of it all
                actor.tell(ExpireRetention(now + i, 5.0))
        replies = [inbox.messages.get(timeout=5) for _ in range(120)]
        assert all(r.ok for r in replies)
        final = actor.ask(GetState(), timeout=2)
        journal.flush()
        assert wait_for_snapshots(5)
        highest = journal.highest_sequence_nr("inventory")
        newest = journal.load_snapshot("inventory")
        assert newest is not None
        older = journal.load_snapshot("inventory", newest.sequence_nr - 1)  # if one was written
        for snapshot in filter(None, (newest, older)):
            assert snapshot.snapshot == replayed(journal, snapshot.sequence_nr), snapshot.sequence_nr
        assert replayed(journal, highest) == final
        assert len(final.reservations) < 60  # some were forgotten
    finally:
        actor.stop()
        journal.close()


def test_a_backlog_of_snapshots_collapses_to_the_newest():
    class Recorded(SlowSnapshots):
        def __init__(self) -> None:
            super().__init__()
            self.saved: list[int] = []

        def save_snapshot(self, persistence_id, sequence_nr, snapshot):
            self.saved.append(sequence_nr)
            super().save_snapshot(persistence_id, sequence_nr, snapshot)

    journal = Recorded()
    actor = InventoryActor.start(journal, snapshot_every=1)
    try:
        actor.ask(StockProducts(((1, 100),)))  # snapshot #1: its write blocks
        assert journal.writing.wait(5)
        inbox = Inbox()
        for i in range(5):  # snapshots #2 to #6 come due while #1 is being written
            actor.tell(reserve(f"o{i}", inbox))
        assert all(inbox.messages.get(timeout=2).ok for _ in range(5))
        assert actor.ask(GetStock(), timeout=2)[1].reserved == 5  # every request fully handled
    finally:
        journal.released.set()
    try:
        assert wait_for_snapshots(5)
        # Spaced by the state's size (1 product, then 1 product + 1 and 3 reservations):
        # due at #1, #2 and #4; #2 was superseded by #4 before its turn came.
        assert journal.saved == [1, 4]
        assert journal.load_snapshot("inventory").snapshot == replayed(journal, 4)
    finally:
        actor.stop()


def test_snapshots_are_spaced_by_the_size_of_the_state_so_their_cost_per_event_stays_constant():
    taken: list[int] = []

    class Counting(InventoryActor):
        def snapshot_of(self, state):
            taken.append(self.sequence_nr)  # the actor's thread: where the copy is made
            return super().snapshot_of(state)

    journal = InMemoryJournal()
    actor = Counting.start(journal, snapshot_every=10)
    try:
        actor.ask(StockProducts(((1, 10**6),)))
        inbox = Inbox()
        for i in range(200):  # 200 open reservations: the state grows with every event
            actor.tell(reserve(f"o{i}", inbox))
        assert all(inbox.messages.get(timeout=5).ok for _ in range(200))
        assert wait_for_snapshots(5)
        # Each snapshot comes max(10, entries in the state) events after the one before it:
        # 10, 20, 40, 80, 160 - not 20 snapshots of an ever larger state.
        assert taken == [10, 20, 40, 80, 160]
        assert journal.load_snapshot("inventory").snapshot == replayed(journal, 160)
    finally:
        actor.stop()
