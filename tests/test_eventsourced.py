"""The event-sourced actor shell: nothing is told before it is durable."""

from __future__ import annotations

import queue
import sqlite3
import threading
import time

from saga_actors.actors.inventory import GetStock, InventoryActor, ReserveStock, StockProducts
from saga_actors.actors.validation import OrderItem
from saga_actors.persistence import InMemoryJournal
from saga_actors.sagas.protocol import Correlation, Reply, Request


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
