"""Retention: finished work is remembered for a window, then forgotten; memory stays bounded.

The rules first (no threads, no clock: time comes in through `ExpireRetention`),
then the actors, then the order system end to end.
"""

from __future__ import annotations

import datetime
import json
import math
import queue
import time
from dataclasses import replace
from decimal import Decimal

import pytest

from saga_actors.actors import FaultPlan, IdempotencyConflict, OrderSystem, orders
from saga_actors.actors import inventory as inv
from saga_actors.actors import payment as pay
from saga_actors.actors.codec import order_codec
from saga_actors.actors.order_saga import OrderSagaData, journaled_order
from saga_actors.actors.validation import OrderItem, PaymentCard, validate_order
from saga_actors.persistence import InMemoryJournal, SQLiteJournal
from saga_actors.sagas import RetryPolicy
from saga_actors.sagas.engine import AbortDecided, CommitDecided, SagaAborted, SagaCompleted, SagaStarted
from saga_actors.sagas.participant import GetState
from saga_actors.sagas.protocol import Correlation, Request
from saga_actors.sagas.retention import (
    ExpireRetention,
    FinishedBatch,
    Retained,
    RetentionExpired,
    expiry_period,
)
from saga_actors.supervision.timer import Timer
from tests.conftest import APPROVED, DECLINED, assert_consistent, make_request

T0 = 1_800_000_000.0  # epoch seconds: the rules never read the clock
DAY = 24 * 3600.0
TODAY = datetime.date(2026, 11, 26)
ITEMS = (OrderItem(1, 2),)


class Recorded:
    """Runs commands through a service's pure rules, keeping every event (to replay them)."""

    def __init__(self, module, state) -> None:
        self.module, self.state, self.events = module, state, []

    def run(self, command, **kwargs):
        events = self.module.decide(command, self.state, **kwargs)
        for event in events:
            self.state = self.module.evolve(self.state, event)
        self.events += events
        if isinstance(command, (ExpireRetention, orders.PlaceOrder)):  # nothing to answer
            return events
        return events, self.module.answer(command, self.state)

    def expire(self, now: float, retention: float = DAY) -> list:
        return self.run(ExpireRetention(now, retention))

    def replayed(self, initial):
        state = initial
        for event in self.events:
            state = self.module.evolve(state, event)
        return state


def stocked() -> Recorded:
    inventory = Recorded(inv, inv.InventoryState())
    inventory.run(inv.StockProducts(((1, 10), (2, 10))))
    return inventory


def authorize(order_id: str, card: str = APPROVED) -> pay.AuthorizePayment:
    return pay.AuthorizePayment(order_id, Decimal("10.00"), "USD", PaymentCard(card, "12/30"))


def place(order_id: str, **changes) -> orders.PlaceOrder:
    return orders.PlaceOrder(validate_order(make_request(order_id, **changes)))


# --- the rules ---


def test_a_finished_entry_is_kept_for_the_retention_and_forgotten_after():
    retained = Retained()
    assert retained.expire(ExpireRetention(T0, DAY)) == []  # nothing finished: nothing journaled
    retained.finish("o1")
    [stamp] = retained.expire(ExpireRetention(T0, DAY))
    assert stamp == RetentionExpired(T0, T0 - DAY)
    assert retained.forget(stamp) == []
    assert retained.batches == (FinishedBatch(T0, ("o1",)),) and len(retained) == 1
    assert retained.expire(ExpireRetention(T0 + DAY - 0.001, DAY)) == []  # still inside the window
    [due] = retained.expire(ExpireRetention(T0 + DAY, DAY))
    assert retained.forget(due) == ["o1"]
    assert len(retained) == 0 and retained.expire(ExpireRetention(T0 + 2 * DAY, DAY)) == []


@pytest.mark.parametrize(("retention", "period"), [(0.2, 1.0), (60, 6.0), (DAY, 3600.0), (365 * DAY, 3600.0)])
def test_expiry_runs_every_tenth_of_the_retention_within_a_second_and_an_hour(retention, period):
    assert expiry_period(retention) == period


def test_a_late_reserve_after_its_release_is_refused_inside_the_window():
    inventory = stocked()
    assert inventory.run(inv.ReleaseStock("o1"))[1] == (True, None)  # overtook its reserve: a tombstone
    inventory.expire(T0)
    inventory.expire(T0 + DAY / 2)
    assert inventory.run(inv.ReserveStock("o1", ITEMS)) == ([], (False, "released"))
    assert inventory.state.reserved[1] == 0
    inventory.expire(T0 + DAY)  # past the window: the tombstone is forgotten
    assert inventory.state.reservations == {} and len(inventory.state.retained) == 0


def test_the_inventory_forgets_finished_reservations_and_keeps_its_counters():
    inventory = stocked()
    inventory.run(inv.ReserveStock("committed", ITEMS))
    inventory.run(inv.CommitStock("committed"))
    inventory.run(inv.ReserveStock("released", ITEMS))
    inventory.run(inv.ReleaseStock("released"))
    inventory.run(inv.ReserveStock("rejected", (OrderItem(1, 99),)))
    inventory.run(inv.ReserveStock("held", (OrderItem(2, 3),)))
    inventory.expire(T0)
    assert inventory.run(inv.CommitStock("committed")) == ([], (True, None))  # a repeat, inside
    inventory.expire(T0 + DAY)
    state = inventory.state
    assert set(state.reservations) == {"held"}  # the active one only
    assert (state.on_hand, state.reserved, state.received) == ({1: 8, 2: 10}, {1: 0, 2: 3}, {1: 10, 2: 10})
    assert inventory.replayed(inv.InventoryState()) == state


def test_a_late_authorize_after_its_void_is_refused_inside_the_window():
    payment = Recorded(pay, pay.PaymentState())
    assert payment.run(pay.VoidPayment("o1"))[1] == (True, None)  # overtook its authorize
    payment.expire(T0)
    assert payment.run(authorize("o1"), today=TODAY) == ([], (False, "voided"))
    payment.expire(T0 + DAY)
    assert not payment.state.known("o1")


def test_payment_forgets_finished_payments_and_keeps_the_captured_totals():
    payment = Recorded(pay, pay.PaymentState())
    payment.run(authorize("captured"), today=TODAY)
    payment.run(pay.CapturePayment("captured"))
    payment.run(authorize("voided"), today=TODAY)
    payment.run(pay.VoidPayment("voided"))
    payment.run(authorize("declined", DECLINED), today=TODAY)
    payment.run(authorize("open"), today=TODAY)
    payment.expire(T0)
    assert payment.run(authorize("declined", DECLINED), today=TODAY) == ([], (False, "card_declined"))
    payment.expire(T0 + DAY)
    state = payment.state
    assert list(state.authorizations) == ["open"] and not state.declined and not state.voided_unseen
    assert pay.captures(state) == pay.CapturesView(1, {"USD": Decimal("10.00")})
    assert payment.replayed(pay.PaymentState()) == state


def test_orders_forget_finished_orders_and_keep_the_sales_totals():
    service = Recorded(orders, orders.OrdersState())
    service.run(place("confirmed", items=[(101, 2)]))
    service.run(orders.ConfirmOrder("confirmed"))
    service.run(place("cancelled"))
    service.run(orders.CancelOrder("cancelled", "card_declined"))
    service.run(place("pending"))
    service.expire(T0)
    service.expire(T0 + DAY)
    state = service.state
    assert list(state.orders) == ["pending"] and state.forgotten == 2
    assert orders.sales(state) == orders.SalesView(1, {101: 2}, {"USD": Decimal("19.98")})
    assert service.replayed(orders.OrdersState()) == state


def test_a_forgotten_order_is_told_apart_by_its_journaled_fingerprint():
    state = orders.OrdersState(forgotten=1)
    first = place("o1").order
    view = orders.OrderView("o1", "confirmed", None, first.amount, first.items)
    journaled = orders.JournaledOrder(view, "USD", "4242", first.fingerprint())
    assert orders.decide(place("o1"), state, journaled) == []  # a repeat: answered from the journal
    with pytest.raises(IdempotencyConflict):
        orders.decide(place("o1", amount="1.00"), state, journaled)
    assert isinstance(orders.decide(place("o1"), state)[0], orders.OrderPlaced)  # not in the journal: new


def test_a_saga_journaled_before_fingerprints_is_compared_by_what_it_recorded():
    first = place("o1").order
    legacy = orders.JournaledOrder(
        orders.OrderView("o1", "cancelled", "card_declined", first.amount, first.items), "USD", "4242", ""
    )
    state = orders.OrdersState(forgotten=1)
    assert orders.decide(place("o1"), state, legacy) == []
    for different in ({"amount": "1.00"}, {"card": "5555555555554444"}, {"items": [(101, 3)]}):
        with pytest.raises(IdempotencyConflict):
            orders.decide(place("o1", **different), state, legacy)


def retaining(service: str):
    """A service's state with entries both stamped (in a batch) and finished since."""
    if service == "inventory":
        recorded = stocked()
        finish = [inv.ReleaseStock("o1"), inv.ReleaseStock("o2")]
    elif service == "payment":
        recorded = Recorded(pay, pay.PaymentState())
        recorded.run(authorize("o1"), today=TODAY)
        finish = [pay.CapturePayment("o1"), pay.VoidPayment("o2")]
    else:
        recorded = Recorded(orders, orders.OrdersState())
        recorded.run(place("o1"))
        recorded.run(place("o2"))
        finish = [orders.ConfirmOrder("o1"), orders.CancelOrder("o2", "card_declined")]
    recorded.run(finish[0])
    recorded.expire(T0)
    recorded.run(finish[1])
    return recorded.state


@pytest.mark.parametrize("service", ["inventory", "payment", "orders"])
def test_a_snapshot_with_retained_entries_reads_back_equal(service):
    state = retaining(service)
    copied = state.copy()
    codec = order_codec()
    assert codec.decode(*codec.encode(copied)) == copied == state
    assert len(copied.retained.batches) == 1 and len(copied.retained.unbatched) == 1


def test_a_0_3_snapshot_reads_back_with_its_totals_summed_from_its_entries():
    payment = Recorded(pay, pay.PaymentState())
    service = Recorded(orders, orders.OrdersState())
    card = PaymentCard(APPROVED, "12/30")
    for order_id, currency in (("o1", "USD"), ("o2", "USD"), ("o3", "EUR"), ("o4", "USD")):
        payment.run(pay.AuthorizePayment(order_id, Decimal("10.50"), currency, card), today=TODAY)
        service.run(place(order_id, items=[(101, 2), (102, 1)], currency=currency))
        if order_id != "o4":  # o4 is voided and cancelled
            payment.run(pay.CapturePayment(order_id))
            service.run(orders.ConfirmOrder(order_id))
    payment.run(pay.VoidPayment("o4"))
    service.run(orders.CancelOrder("o4", "x"))
    codec = order_codec()
    for state, added in (
        (payment.state, ("retained", "captured_count", "captured_total")),
        (service.state, ("retained", "forgotten", "confirmed_count", "confirmed_units", "confirmed_amounts")),
    ):
        type_name, version, data = codec.encode(state)
        assert version == 2
        fields = json.loads(data)
        for name in added:  # what 0.3 did not write
            del fields[name]
        old = codec.decode(type_name, 1, json.dumps(fields))
        assert old == replace(state, retained=Retained())
    assert pay.captures(payment.state) == pay.CapturesView(
        3, {"USD": Decimal("21.00"), "EUR": Decimal("10.50")}
    )
    assert orders.sales(service.state) == orders.SalesView(
        3, {101: 6, 102: 3}, {"USD": Decimal("39.96"), "EUR": Decimal("19.98")}
    )


def test_a_saga_journaled_before_0_4_reads_back_without_a_fingerprint():
    codec = order_codec()
    data = OrderSagaData("o1", ITEMS, Decimal("19.98"), "USD", "4242", "f" * 64)
    type_name, version, stored = codec.encode(SagaStarted("o1", data))
    old = stored.replace(',"fingerprint":"' + "f" * 64 + '"', "")
    assert "fingerprint" not in old
    assert codec.decode(type_name, version, old).data.fingerprint == ""


def test_the_order_is_read_back_from_its_sagas_stream():
    journal = InMemoryJournal()
    order = place("done").order
    data = OrderSagaData.from_order(order)
    assert data.fingerprint == order.fingerprint()
    journal.append("saga:order:done", [SagaStarted("done", data), CommitDecided(), SagaCompleted()], 0)
    journal.append(
        "saga:order:no",
        [
            SagaStarted("no", OrderSagaData.from_order(place("no").order)),
            AbortDecided("card_declined", "authorize_payment", ()),
            SagaAborted("card_declined"),
        ],
        0,
    )
    journal.append("saga:order:open", [SagaStarted("open", OrderSagaData.from_order(place("open").order))], 0)
    done = journaled_order(journal, "done")
    view = orders.OrderView("done", "confirmed", None, order.amount, order.items)
    assert done == orders.JournaledOrder(view, "USD", "4242", data.fingerprint)
    assert journaled_order(journal, "no").view.state == "cancelled"
    assert journaled_order(journal, "no").view.reason == "card_declined"
    assert journaled_order(journal, "open").view.state == "pending"
    assert journaled_order(journal, "never") is None


# --- the actors ---


class Inbox:
    def __init__(self) -> None:
        self.messages: queue.Queue = queue.Queue()

    def tell(self, message) -> None:
        self.messages.put(message)

    def answer(self) -> tuple[bool, str | None]:
        reply = self.messages.get(timeout=5)
        return reply.ok, reply.reason


def request(command, inbox: Inbox) -> Request:
    return Request(command, inbox, Correlation(command.order_id, "do", "step", 1))


def test_a_late_reserve_after_its_compensation_is_refused_by_the_actor_inside_the_window():
    journal = InMemoryJournal()
    actor = inv.InventoryActor.start(journal, retention=DAY)
    try:
        actor.ask(inv.StockProducts(((1, 5),)))
        inbox = Inbox()
        actor.tell(request(inv.ReleaseStock("o1"), inbox))
        assert inbox.answer() == (True, None)
        actor.ask(ExpireRetention(time.time(), DAY))  # an expiry ran: the tombstone is still inside
        actor.tell(request(inv.ReserveStock("o1", (OrderItem(1, 1),)), inbox))
        assert inbox.answer() == (False, "released")
        state = actor.ask(GetState())
        assert state.reservations["o1"].status == "released" and state.reserved[1] == 0
    finally:
        actor.stop()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)  # the test's thread polls; no actor sleeps


def test_the_actor_expires_on_its_own_schedule_and_journals_it():
    journal, timer = InMemoryJournal(), Timer("test-timer")
    timer.start()
    actor = inv.InventoryActor.start(journal, retention=0.2, timer=timer)
    try:
        actor.ask(inv.StockProducts(((1, 5),)))
        inbox = Inbox()
        actor.tell(request(inv.ReleaseStock("o1"), inbox))
        assert inbox.answer() == (True, None)
        # Every expiry_period(0.2) = 1 s: one expiry stamps the tombstone, the next forgets it.
        wait_until(lambda: not actor.ask(GetState()).reservations)
        expired = [e.event for e in journal.replay("inventory") if isinstance(e.event, RetentionExpired)]
        assert len(expired) == 2 and expired[1].before >= expired[0].at
    finally:
        actor.stop()
        timer.stop()
    assert timer.pending() == 0  # the stopped actor cancelled its next expiry


# --- the order system ---


def expire_everything(system: OrderSystem, retention: float) -> None:
    """Run two expiries a retention apart in every service: whatever had finished is forgotten.

    Told through the services' addresses with an explicit `now` (later than the
    clock), so the test does not wait for the timer's schedule.
    """
    now = time.time() + 60
    for address in (system._inventory, system._payment, system._orders):
        for at in (now, now + 2 * retention):
            address.ask(ExpireRetention(at, retention), timeout=5)


def states(system: OrderSystem) -> tuple:
    return tuple(a.ask(GetState(), timeout=5) for a in (system._inventory, system._payment, system._orders))


def entries(system: OrderSystem) -> dict[str, int]:
    """How many entries each service holds, active or retained."""
    inventory, payment, orders_ = states(system)
    return {
        "reservations": len(inventory.reservations) + len(inventory.retained),
        "payments": len(payment.authorizations) + len(payment.declined) + len(payment.voided_unseen),
        "payments retained": len(payment.retained),
        "orders": len(orders_.orders) + len(orders_.retained),
    }


@pytest.fixture(params=["memory", "sqlite"])
def journal_path(request, tmp_path):
    return None if request.param == "memory" else tmp_path / "orders.db"


def test_a_repeat_inside_the_window_gets_its_first_outcome_and_changes_nothing(journal_path):
    with OrderSystem(journal_path=journal_path, stock={101: 10}) as system:
        assert system.place_order(make_request("ok", [(101, 2)]), timeout=5) is True
        assert system.place_order(make_request("no", card=DECLINED), timeout=5) is False
        assert system.wait_idle(5)
        before = (system.inventory(), system.payments(), system.orders(), states(system))
        assert system.place_order(make_request("ok", [(101, 2)]), timeout=5) is True
        assert system.place_order(make_request("no", card=DECLINED), timeout=5) is False
        assert system.wait_idle(5)
        assert (system.inventory(), system.payments(), system.orders(), states(system)) == before
        metrics = system.metrics()
        assert metrics["duplicates"] == 2 and metrics["orders_placed"] == 2


def test_past_the_window_an_order_is_answered_from_the_journal(journal_path):
    with OrderSystem(journal_path=journal_path, stock={101: 10}, retention=0.2) as system:
        assert system.place_order(make_request("ok", [(101, 2)]), timeout=5) is True
        assert system.place_order(make_request("no", card=DECLINED), timeout=5) is False
        assert system.wait_idle(5)
        first = {o: system.order(o) for o in ("ok", "no")}
        assert first["no"].reason == "card_declined"
        expire_everything(system, 0.2)

        assert system.orders() == {} and system.payments() == {}  # gone from memory
        assert entries(system) == {"reservations": 0, "payments": 0, "payments retained": 0, "orders": 0}
        assert {o: system.order(o) for o in ("ok", "no")} == first  # read from the sagas' streams
        stock, metrics = system.inventory(), system.metrics()
        assert system.place_order(make_request("ok", [(101, 2)]), timeout=5) is True
        assert system.place_order(make_request("no", card=DECLINED), timeout=5) is False
        after = system.metrics()
        assert after["duplicates"] == metrics["duplicates"] + 2
        assert after["orders_placed"] == metrics["orders_placed"] == 2
        assert system.inventory() == stock and system.orders() == {} and system.payments() == {}
        with pytest.raises(IdempotencyConflict, match="ok"):
            system.place_order(make_request("ok", [(101, 3)]), timeout=5)
        assert system.metrics()["idempotency_conflicts"] == 1
        assert system.place_order(make_request("new", [(101, 1)]), timeout=5) is True
        assert system.wait_idle(5)
        assert system.inventory()[101].on_hand == 7
        assert_consistent(system, {101: 10})


def test_finished_entries_expire_on_the_services_own_schedule():
    with OrderSystem(stock={101: 10}, retention=0.2) as system:
        assert system.place_order(make_request("ok", [(101, 2)]), timeout=5) is True
        assert system.wait_idle(5)
        wait_until(lambda: not system.orders() and not system.payments())
        wait_until(lambda: entries(system)["reservations"] == 0)
        assert system.order("ok").state == "confirmed"
        assert_consistent(system)


def test_memory_and_snapshots_hold_the_work_in_hand_not_history():
    codec = order_codec()
    sizes = []
    # A retention of 2 s: long enough that no request waits in a mailbox past half of it
    # (then it is refused as expired) on a loaded machine; the expiries are told explicitly.
    with OrderSystem(stock={1: 10**6}, retention=2.0) as system:
        for batch in range(3):
            requests = [
                make_request(f"b{batch}-{i}", [(1, 1)], card=DECLINED if i % 5 == 0 else APPROVED)
                for i in range(100)
            ]
            futures = [system.submit(r) for r in requests]
            assert all(f.get(10) in (True, False) for f in futures)
            assert system.wait_idle(10)
            expire_everything(system, 2.0)
            assert entries(system) == {"reservations": 0, "payments": 0, "payments retained": 0, "orders": 0}
            sizes.append([len(codec.encode(state)[2]) for state in states(system)])
        assert_consistent(system)
    # What a snapshot of each service would hold after 100, 200, 300 orders: the same.
    for service in range(3):
        first, *later = (size[service] for size in sizes)
        assert all(abs(size - first) <= 16 for size in later), sizes  # a digit more in a counter


def test_an_order_in_flight_is_never_forgotten():
    # The retention outlasts the wire (requests older than half of it are refused).
    slow = FaultPlan(min_latency=0.3, max_latency=0.3, seed=1)
    with OrderSystem(stock={101: 10}, payment_faults=slow, retention=1.0) as system:
        future = system.submit(make_request("slow", [(101, 1)]))
        wait_until(lambda: system.order("slow") is not None)
        expire_everything(system, 1.0)
        assert system.orders()["slow"].state == "pending"
        assert states(system)[0].reservations["slow"].status == "held"
        assert future.get(10) is True
        assert system.wait_idle(5)
        expire_everything(system, 1.0)
        assert system.orders() == {} and system.order("slow").state == "confirmed"


def test_a_restart_after_many_finished_orders_recovers_the_bounded_state(tmp_path):
    path = tmp_path / "orders.db"
    count = 2000
    with OrderSystem(journal_path=path, stock={1: 10**6}, retention=0.2) as system:
        futures = [system.submit(make_request(f"o{i}", [(1, 1)], amount="1.00")) for i in range(count)]
        assert all(f.get(60) for f in futures)
        assert system.wait_idle(10)
        expire_everything(system, 0.2)
        before = states(system)
    with OrderSystem(journal_path=path, retention=0.2) as system:
        assert states(system) == before
        assert entries(system) == {"reservations": 0, "payments": 0, "payments retained": 0, "orders": 0}
        assert system.orders() == {} and system.order("o1234").state == "confirmed"
        assert system.place_order(make_request("o7", [(1, 1)], amount="1.00"), timeout=5) is True
        assert system.metrics()["duplicates"] == 1
        assert system.inventory()[1].on_hand == 10**6 - count
        assert_consistent(system)


@pytest.mark.parametrize("retention", [0, -1, math.nan, math.inf, 10**400, 1e9, "60", True, None])
def test_retention_must_be_a_positive_finite_number_of_seconds(retention):
    with pytest.raises(ValueError, match="retention must be a positive number of seconds"):
        OrderSystem(retention=retention)


@pytest.mark.parametrize("retention", [0.001, 60, 86400.0, 10**9 - 1])
def test_retention_accepts_any_positive_number_of_seconds(retention):
    OrderSystem(retention=retention)


@pytest.mark.parametrize("retention", [0, -1, math.nan, math.inf, 10**400, "60", True])
def test_a_service_built_directly_refuses_a_meaningless_retention(retention):
    with pytest.raises(ValueError, match="retention must be a positive number of seconds"):
        inv.InventoryActor(InMemoryJournal(), retention=retention)


def test_a_request_slower_than_half_the_retention_is_refused_so_nothing_happens_twice(tmp_path):
    """Found by trying to break it: a reserve or authorize that spent longer on the wire than the
    window took effect again after its entry was forgotten (8 of 30 customers charged twice)."""
    wire = FaultPlan(min_latency=0.0, max_latency=2.0, seed=5)
    retry = RetryPolicy(
        attempt_timeout=0.1, initial_interval=0.01, maximum_interval=0.05, maximum_attempts=200
    )
    path = tmp_path / "orders.db"
    with OrderSystem(
        journal_path=path,
        stock={1: 1000},
        inventory_faults=wire,
        payment_faults=wire,
        retry=retry,
        retention=0.4,
    ) as system:
        futures = [system.submit(make_request(f"s{i}", [(1, 1)], amount="1.00")) for i in range(12)]
        assert all(f.get(60) for f in futures)
        assert system.wait_idle(10)
        # Every request still on the wire lands; the services forget on their own schedule (1 s).
        wait_until(lambda: len(states(system)[1].authorizations) == 0, timeout=10)
        wait_until(lambda: system._timer.pending() <= 3, timeout=10)  # only the 3 expiry ticks left
        assert_consistent(system)
    journal = SQLiteJournal(path, order_codec())
    try:
        effects = [s.event for pid in ("inventory", "payment") for s in journal.replay(pid)]
    finally:
        journal.close()
    for kind in (inv.StockReserved, inv.StockCommitted, pay.PaymentAuthorized, pay.PaymentCaptured):
        ids = [e.order_id for e in effects if isinstance(e, kind)]
        assert sorted(ids) == sorted(f"s{i}" for i in range(12)), kind.__name__


def test_a_step_retried_after_its_effect_still_finds_its_entry_however_short_the_retention():
    """Found by trying to break it: a commit or capture took effect, its reply died with a crash,
    and the retry came after the entry was forgotten: refused forever, the saga stuck."""
    crashy = FaultPlan(crash_rate=0.3, seed=11)
    retry = RetryPolicy(attempt_timeout=1.5, initial_interval=0.01, maximum_interval=0.5, maximum_attempts=8)
    payment = FaultPlan(crash_rate=0.3, seed=12)
    with OrderSystem(
        stock={1: 100}, inventory_faults=crashy, payment_faults=payment, retry=retry, retention=0.05
    ) as system:
        futures = [system.submit(make_request(f"r{i}", [(1, 1)], amount="1.00")) for i in range(20)]
        outcomes = [f.get(60) for f in futures]  # every caller answered: none stuck for ever
        assert system.wait_idle(10)
        # Past the commit decision nothing is abandoned: whatever was committed ends confirmed.
        assert sum(outcomes) == system.metrics()["orders_confirmed"] > 0
        assert system.metrics()["sagas_stuck"] == 0
        assert_consistent(system)


def test_an_order_cancelled_at_recovery_is_still_answered_from_the_journal_past_the_window(tmp_path):
    """Found by trying to break it: an order journaled but whose saga never began (the process
    died in between) is cancelled at recovery; past the window it was taken as never placed."""
    path = tmp_path / "orders.db"
    order = validate_order(make_request("x", [(1, 2)]))
    journal = SQLiteJournal(path, order_codec())
    journal.append("inventory", [inv.ProductsStocked(((1, 10),))], 0)
    placed = orders.OrderPlaced.of(order)
    journal.append("orders", [placed], 0)
    journal.close()
    with OrderSystem(journal_path=path, retention=0.05) as system:
        assert system.recovery().orders_never_started == 1
        expire_everything(system, 0.05)
        assert system.orders() == {}  # forgotten in memory ...
        view = system.order("x")  # ... answered from its saga stream
        assert view is not None and (view.state, view.reason) == ("cancelled", "interrupted")
        assert system.place_order(make_request("x", [(1, 2)]), timeout=5) is False  # its first outcome
        with pytest.raises(IdempotencyConflict):
            system.place_order(make_request("x", [(1, 5)], amount="99.00"), timeout=5)
        assert system.inventory()[1].on_hand == 10 and system.payments() == {}
        assert system.saga("x").phase == "aborted"
