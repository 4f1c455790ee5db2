"""Durability: an OrderSystem restarted on its journal finds everything it promised."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from saga_actors.actors import OrderSystem
from saga_actors.actors.codec import order_codec
from saga_actors.actors.order_saga import OrderSagaData
from saga_actors.actors.orders import OrderPlaced
from saga_actors.actors.validation import OrderItem, validate_order
from saga_actors.persistence import JournalCorrupted, SQLiteJournal
from saga_actors.sagas.engine import CommitDecided, SagaStarted, StageStarted
from tests.conftest import DECLINED, assert_consistent, make_request
from tests.helpers.crash_child import STOCK

ROOT = Path(__file__).resolve().parent.parent


def test_state_comes_back_from_the_journal(tmp_path):
    path = tmp_path / "orders.db"
    with OrderSystem(journal_path=path, stock={1: 10, 2: 5}) as system:
        assert system.place_order(make_request("a", [(1, 3)]), timeout=5)
        assert not system.place_order(make_request("b", [(2, 1)], card=DECLINED), timeout=5)
        before = (system.orders(), system.inventory(), system.payments())
    with OrderSystem(journal_path=path, stock={1: 999}) as system:  # stock only seeds an empty journal
        assert (system.orders(), system.inventory(), system.payments()) == before
        assert system.recovery().sagas_resumed == 0
        # A repeat of a finished order gets the stored outcome and changes nothing.
        assert system.place_order(make_request("a", [(1, 3)]), timeout=5) is True
        assert system.place_order(make_request("b", [(2, 1)], card=DECLINED), timeout=5) is False
        assert system.inventory()[1].on_hand == 7
        assert system.metrics()["orders_placed"] == 0
        assert_consistent(system, {1: 10, 2: 5})


def test_snapshots_bound_replay_and_give_the_same_state(tmp_path):
    path = tmp_path / "orders.db"
    with OrderSystem(journal_path=path, stock={1: 500}, snapshot_every=7) as system:
        for i in range(30):
            system.place_order(make_request(f"o{i}", [(1, 1 + i % 3)]), timeout=5)
        before = (system.orders(), system.inventory(), system.payments())
    journal = SQLiteJournal(path, order_codec())
    snapshot = journal.load_snapshot("inventory")
    assert snapshot is not None and snapshot.sequence_nr >= 30
    # Replay after the newest snapshot is bounded by snapshot_every or the state's own size,
    # whichever is larger (here the 24 h window still holds all 30 reservations).
    entries = len(snapshot.snapshot.reservations) + len(snapshot.snapshot.on_hand)
    assert journal.highest_sequence_nr("inventory") - snapshot.sequence_nr < max(7, entries)
    journal.close()
    with OrderSystem(journal_path=path, snapshot_every=7) as system:
        assert (system.orders(), system.inventory(), system.payments()) == before


def test_card_number_and_cvv_never_reach_the_journal_file(tmp_path):
    path = tmp_path / "orders.db"
    card = "5555555555554444"
    with OrderSystem(journal_path=path, stock={1: 5}, snapshot_every=2) as system:
        for i in range(4):
            system.place_order(make_request(f"o{i}", [(1, 1)], card=card, cvv="9876"), timeout=5)
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"4444" in data  # the last four digits are kept ...
    assert card.encode() not in data and b"9876" not in data  # ... nothing more


def _journal_with(path, events_by_id):
    journal = SQLiteJournal(path, order_codec())
    for persistence_id, events in events_by_id.items():
        journal.append(persistence_id, events, 0)
    journal.close()


def test_interrupted_saga_without_decision_is_rolled_back(tmp_path):
    # The process died after the stock was reserved, before the commit decision.
    path = tmp_path / "orders.db"
    order = validate_order(make_request("x", [(1, 2)]))
    items = (OrderItem(1, 2),)
    _journal_with(
        path,
        {
            "inventory": [*_stocked({1: 5}), _reserved("x", items)],
            "orders": [_placed(order)],
            "saga:order:x": [SagaStarted("x", OrderSagaData.from_order(order)), StageStarted(0)],
        },
    )
    with OrderSystem(journal_path=path) as system:
        report = system.recovery()
        assert (report.sagas_resumed, report.rolled_back, report.rolled_forward) == (1, 1, 0)
        assert system.wait_idle(5)
        view = system.order("x")
        assert (view.state, view.reason) == ("cancelled", "interrupted")
        assert system.place_order(make_request("x", [(1, 2)]), timeout=5) is False
        assert_consistent(system, {1: 5})


def test_interrupted_saga_after_decision_is_rolled_forward(tmp_path):
    path = tmp_path / "orders.db"
    order = validate_order(make_request("y", [(1, 2)]))
    from saga_actors.actors.payment import PaymentAuthorized

    _journal_with(
        path,
        {
            "inventory": [*_stocked({1: 5}), _reserved("y", order.items)],
            "payment": [PaymentAuthorized("y", order.amount, "USD", "4242")],
            "orders": [_placed(order)],
            "saga:order:y": [
                SagaStarted("y", OrderSagaData.from_order(order)),
                StageStarted(0),
                CommitDecided(),
                StageStarted(1),
            ],
        },
    )
    with OrderSystem(journal_path=path) as system:
        assert system.recovery().rolled_forward == 1
        assert system.place_order(make_request("y", [(1, 2)]), timeout=5) is True  # waits for it
        assert system.inventory()[1].on_hand == 3
        assert system.payments()["y"].state == "captured"
        assert_consistent(system, {1: 5})


def test_order_journaled_but_saga_never_started_is_cancelled(tmp_path):
    path = tmp_path / "orders.db"
    order = validate_order(make_request("z", [(1, 1)]))
    _journal_with(path, {"inventory": _stocked({1: 5}), "orders": [_placed(order)]})
    with OrderSystem(journal_path=path) as system:
        assert system.recovery().orders_never_started == 1
        assert system.order("z").state == "cancelled"
        assert_consistent(system, {1: 5})


@pytest.mark.parametrize(
    ("corruption", "error"),
    [
        (
            "UPDATE events SET type = 'Mystery' WHERE persistence_id = 'saga:order:a' AND sequence_nr = 5",
            r"saga:order:a #5: event: unknown type 'Mystery'",
        ),
        (
            "UPDATE events SET data = 'garbage' WHERE persistence_id = 'orders' AND sequence_nr = 2",
            r"orders #2: event: unreadable JSON",
        ),
        (
            "UPDATE events SET type = 'Mystery' WHERE persistence_id = 'inventory' AND sequence_nr = 2",
            r"inventory #2: event: unknown type 'Mystery'",
        ),
        (
            "DELETE FROM events WHERE persistence_id = 'orders' AND sequence_nr = 1",
            r"orders #1: event missing",
        ),
    ],
)
def test_corrupt_journal_stops_start_with_a_clear_error_and_nothing_running(tmp_path, corruption, error):
    path = tmp_path / "orders.db"
    with OrderSystem(journal_path=path, stock={1: 5}, snapshot_every=None) as system:
        system.place_order(make_request("a", [(1, 1)]), timeout=5)
    db = sqlite3.connect(path)
    db.execute(corruption)
    db.commit()
    db.close()
    threads_before = set(threading.enumerate())
    with pytest.raises(JournalCorrupted, match=error):
        OrderSystem(journal_path=path).start()
    assert set(threading.enumerate()) <= threads_before, "a failed start left threads running"


def _stocked(stock):
    from saga_actors.actors.inventory import ProductsStocked, stock_command

    return [ProductsStocked(stock_command(stock).stock)]


def _reserved(order_id, items):
    from saga_actors.actors.inventory import StockReserved

    return StockReserved(order_id, items)


def _placed(order):
    return OrderPlaced.of(order)


# --- kill -9 ---


@pytest.mark.parametrize("kill_after", [3, 120, 230], ids=["early", "middle", "late"])
def test_kill_9_in_the_middle_loses_no_promise(tmp_path, kill_after):
    """A child places 260 concurrent orders with faults; SIGKILL after N outcomes."""
    path = tmp_path / "orders.db"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.crash_child", str(path), "260", str(kill_after)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    reported: dict[str, bool] = {}
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("OUTCOME"):
                _, order_id, outcome = line.split()
                reported[order_id] = outcome == "1"
                if len(reported) >= kill_after:
                    break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert len(reported) >= kill_after, "the child finished or died before the kill point"

    with OrderSystem(journal_path=path) as system:
        assert system.wait_idle(60), "resumed sagas did not finish"
        orders = system.orders()
        for order_id, confirmed in reported.items():
            assert orders[order_id].state == ("confirmed" if confirmed else "cancelled"), order_id
        assert_consistent(system, STOCK)
        report = system.recovery()
        assert report.sagas_resumed + report.orders_never_started > 0, "nothing was in flight"
