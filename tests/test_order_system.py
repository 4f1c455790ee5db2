"""The embedded order system end to end: real actors, seeded simulated faults."""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pykka
import pytest

from saga_actors.actors import FaultPlan, IdempotencyConflict, OrderSystem, RetryPolicy, SystemNotRunning
from saga_actors.actors.validation import validate_order
from tests.conftest import APPROVED, DECLINED, NO_FUNDS, assert_consistent, make_request

FAST_RETRY = RetryPolicy(
    initial_interval=0.002, maximum_interval=0.02, maximum_attempts=6, attempt_timeout=0.5
)


def test_happy_path_commits_everything():
    with OrderSystem(stock={101: 5}) as system:
        assert system.place_order(make_request("ord-1", [(101, 2)]), timeout=5) is True
        view = system.order("ord-1")
        assert (view.order_id, view.state, view.reason) == ("ord-1", "confirmed", None)
        stock = system.inventory()[101]
        assert (stock.on_hand, stock.reserved, stock.available) == (3, 0, 3)
        payment = system.payments()["ord-1"]
        assert (payment.state, payment.amount) == ("captured", Decimal("19.98"))
        metrics = system.metrics()
        assert metrics["orders_confirmed"] == 1 and metrics["orders_cancelled"] == 0
        assert system.wait_idle(1)
        assert_consistent(system)


@pytest.mark.parametrize(
    ("request_", "reason", "authorized"),
    [
        (make_request("o", [(101, 6)]), "insufficient_stock", None),
        (make_request("o", [(999, 1)]), "unknown_product", None),
        (make_request("o", [(101, 1), (999, 1)]), "unknown_product", None),
        (make_request("o", card=DECLINED), "card_declined", None),
        (make_request("o", card=NO_FUNDS), "insufficient_funds", None),
        (make_request("o", expiry="01/20"), "expired_card", None),
    ],
)
def test_business_failure_rolls_back(request_, reason, authorized):
    with OrderSystem(stock={101: 5, 102: 0}) as system:
        assert system.place_order(request_, timeout=5) is False
        view = system.order("o")
        assert (view.state, view.reason) == ("cancelled", reason)
        assert system.inventory()[101].reserved == 0
        assert system.payments().get("o", None) in (None,) or system.payments()["o"].state == "voided"
        assert system.metrics()["orders_cancelled"] == 1
        assert_consistent(system)


def test_out_of_stock_after_payment_authorized_voids_it():
    # The payment is authorized (fast) while the stock check fails: it must be voided.
    with OrderSystem(
        stock={101: 1}, inventory_faults=FaultPlan(min_latency=0.02, max_latency=0.02)
    ) as system:
        assert system.place_order(make_request("o", [(101, 2)]), timeout=5) is False
        assert system.payments()["o"].state == "voided"
        assert system.metrics()["compensations"] == 1
        assert_consistent(system)


def test_products_at_zero_are_listed():
    with OrderSystem(stock={1: 0, 2: 3}) as system:
        assert {p: v.on_hand for p, v in system.inventory().items()} == {1: 0, 2: 3}
        assert system.order("nope") is None


def test_sequential_duplicate_returns_first_outcome_without_running_again():
    with OrderSystem(stock={101: 5}) as system:
        request = make_request("dup", [(101, 2)])
        assert system.place_order(request, timeout=5) is True
        assert system.place_order(request, timeout=5) is True
        assert system.inventory()[101].on_hand == 3
        declined = make_request("dup2", card=DECLINED)
        assert system.place_order(declined, timeout=5) is False
        assert system.place_order(declined, timeout=5) is False
        metrics = system.metrics()
        assert metrics["orders_placed"] == 2 and metrics["duplicates"] == 2
        assert_consistent(system)


def test_same_order_id_with_different_content_is_a_conflict():
    with OrderSystem(stock={101: 5}) as system:
        assert system.place_order(make_request("o1", [(101, 1)]), timeout=5)
        with pytest.raises(IdempotencyConflict, match="o1"):
            system.place_order(make_request("o1", [(101, 2)]), timeout=5)
        with pytest.raises(IdempotencyConflict):
            system.submit(make_request("o1", amount="5.00")).get(5)
        assert system.inventory()[101].on_hand == 4


def test_thirty_concurrent_duplicates_all_get_the_one_outcome():
    slow = FaultPlan(min_latency=0.05, max_latency=0.05, seed=1)
    with OrderSystem(stock={101: 5}, payment_faults=slow) as system:
        request = make_request("dup", [(101, 2)])
        barrier = threading.Barrier(30)

        def place() -> bool:
            barrier.wait()
            return system.place_order(request, timeout=10)

        with ThreadPoolExecutor(30) as pool:
            outcomes = list(pool.map(lambda _: place(), range(30)))
        assert outcomes == [True] * 30
        assert system.inventory()[101].on_hand == 3
        assert list(system.payments()) == ["dup"]
        metrics = system.metrics()
        assert metrics["orders_placed"] == 1 and metrics["duplicates"] == 29
        assert_consistent(system)


def test_no_oversell_with_200_concurrent_orders_on_scarce_stock():
    stock = {1: 50, 2: 30}
    faults = FaultPlan(min_latency=0.0, max_latency=0.005, seed=7)
    with OrderSystem(stock=stock, inventory_faults=faults, payment_faults=faults) as system:
        requests = [make_request(f"o{i}", [(1 + i % 2, 1)], amount="1.00") for i in range(200)]
        with ThreadPoolExecutor(50) as pool:
            outcomes = list(pool.map(lambda r: system.place_order(r, timeout=30), requests))
        assert system.wait_idle(10)
        confirmed = [r for r, ok in zip(requests, outcomes, strict=False) if ok]
        # Nothing failed transiently, so every unit is sold and no more.
        assert len(confirmed) == 80
        assert {p: v.on_hand for p, v in system.inventory().items()} == {1: 0, 2: 0}
        assert_consistent(system, stock)


def test_thirty_percent_transient_failures_keep_every_invariant():
    stock = {1: 40, 2: 40, 3: 40}
    inventory_faults = FaultPlan(failure_rate=0.3, max_latency=0.003, seed=11)
    payment_faults = FaultPlan(failure_rate=0.3, max_latency=0.003, seed=12)
    with OrderSystem(
        stock=stock, inventory_faults=inventory_faults, payment_faults=payment_faults, retry=FAST_RETRY
    ) as system:
        futures = [
            system.submit(
                make_request(
                    f"o{i}",
                    [(1 + i % 3, 1 + i % 4)],
                    card=DECLINED if i % 10 == 0 else APPROVED,
                    amount=f"{1 + i % 7}.50",
                )
            )
            for i in range(150)
        ]
        outcomes = [f.get(30) for f in futures]
        assert system.wait_idle(10)
        metrics = system.metrics()
        assert metrics["retries"] > 0
        assert metrics["orders_confirmed"] == sum(outcomes) > 0
        assert metrics["orders_cancelled"] == len(outcomes) - sum(outcomes)
        # A declined card is never confirmed (the stock check may fail first).
        assert not any(outcomes[i] for i in range(0, 150, 10))
        assert any(system.order(f"o{i}").reason == "card_declined" for i in range(0, 150, 10))
        assert_consistent(system, stock)


def test_retries_exhausted_rolls_back_and_compensates():
    # Payment refuses 95% of calls: most authorizations run out of attempts,
    # and their voids (retried until done) still get through eventually.
    policy = RetryPolicy(initial_interval=0.001, maximum_interval=0.005, maximum_attempts=2)
    with OrderSystem(
        stock={1: 100}, retry=policy, payment_faults=FaultPlan(failure_rate=0.95, seed=3)
    ) as system:
        outcomes = [system.place_order(make_request(f"o{i}", [(1, 1)]), timeout=30) for i in range(10)]
        reasons = {system.order(f"o{i}").reason for i in range(10)}
        assert "retries_exhausted" in reasons
        assert outcomes.count(False) >= 1
        assert system.metrics()["compensations"] >= outcomes.count(False)
        assert_consistent(system, {1: 100})


def test_a_compensation_that_overtakes_its_request_is_honoured():
    # The stock check fails at once; the authorize and its void are both on a
    # slow, jittery wire, so some voids arrive before their authorize.
    payment_faults = FaultPlan(min_latency=0.0, max_latency=0.05, seed=5)
    with OrderSystem(stock={1: 10}, payment_faults=payment_faults) as system:
        outcomes = [system.submit(make_request(f"o{i}", [(999, 1)])) for i in range(30)]
        assert [f.get(10) for f in outcomes] == [False] * 30
        payments = system.payments()
        overtaken = [f"o{i}" for i in range(30) if f"o{i}" not in payments]
        assert overtaken, "no void overtook its authorize: the scenario did not happen"
        assert len(overtaken) < 30
        assert all(p.state == "voided" for p in payments.values())
        assert_consistent(system, {1: 10})


def test_timeout_raises_and_the_order_carries_on():
    slow = FaultPlan(min_latency=0.2, max_latency=0.2, seed=1)
    with OrderSystem(stock={101: 5}, inventory_faults=slow) as system:
        with pytest.raises(TimeoutError):
            system.place_order(make_request("slow", [(101, 1)]), timeout=0.01)
        assert system.order("slow").state == "pending"
        assert system.wait_idle(5)
        assert system.order("slow").state == "confirmed"
        assert system.place_order(make_request("slow", [(101, 1)]), timeout=1) is True


def test_submit_many_at_once():
    with OrderSystem(stock={1: 1000}) as system:
        futures = [system.submit(make_request(f"o{i}", [(1, 1)])) for i in range(300)]
        assert all(f.get(30) for f in futures)
        assert system.inventory()[1].on_hand == 700


def test_not_running_is_a_clear_error():
    system = OrderSystem(stock={1: 1})
    with pytest.raises(SystemNotRunning):
        system.place_order(make_request())
    with pytest.raises(SystemNotRunning):
        system.inventory()


def test_stop_stops_only_its_own_actors():
    class Bystander(pykka.ThreadingActor):
        def on_receive(self, message):
            return "still here"

    bystander = Bystander.start()
    try:
        with OrderSystem(stock={1: 5}) as first, OrderSystem(stock={1: 5}) as second:
            assert first.place_order(make_request("a", [(1, 1)]), timeout=5)
            first.stop()
            assert second.place_order(make_request("a", [(1, 1)]), timeout=5)
        assert bystander.ask("ping", timeout=1) == "still here"
    finally:
        bystander.stop()


def test_arguments_are_validated():
    with pytest.raises(ValueError, match=r"stock\[1\].*-1"):
        OrderSystem(stock={1: -1})
    with pytest.raises(ValueError, match="retry must be a RetryPolicy"):
        OrderSystem(retry={"maximum_attempts": 2})
    with pytest.raises(ValueError, match="failure_rate"):
        FaultPlan(failure_rate=1.5)


def test_card_number_and_cvv_never_reach_the_logs_or_the_disk(caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    card = "5555555555554444"
    faults = FaultPlan(failure_rate=0.3, crash_rate=0.1, max_latency=0.002, seed=2)
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={101: 3}, payment_faults=faults, retry=FAST_RETRY) as system:
        for i in range(6):
            system.place_order(make_request(f"o{i}", [(101, 1)], card=card, cvv="987"), timeout=10)
        system.place_order(make_request("declined", card=DECLINED, cvv="987"), timeout=10)
        system.kill("payment")  # a crash logs what the actor held
        system.wait_idle(5)
        assert system.payments()["o0"].state == "captured"
    # pykka logs the repr of a message it cannot handle: a validated order's repr is masked.
    assert card not in repr(validate_order(make_request("x", card=card, cvv="987")))
    text = "\n".join(r.getMessage() + str(r.exc_text or "") + repr(r.args) for r in caplog.records)
    assert caplog.records, "nothing was logged: the test checked nothing"
    assert card not in text
    assert not re.search(r"(?<![0-9A-Za-z])987(?![0-9A-Za-z])", text)  # the CVV (not a run inside a uuid)
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"4444" in on_disk and card.encode() not in on_disk and b"987" not in on_disk


def test_every_saga_log_record_carries_its_order_id(caplog):
    caplog.set_level(logging.DEBUG, logger="saga_actors.sagas")
    with OrderSystem(stock={101: 3}) as system:
        system.place_order(make_request("traced", [(101, 1)]), timeout=5)
        system.place_order(make_request("traced-2", [(101, 9)]), timeout=5)
    # every record about a saga (the runtime's own start and stop are about no saga)
    saga_records = [
        r
        for r in caplog.records
        if r.name.startswith("saga_actors.sagas") and r.name != "saga_actors.sagas.runtime"
    ]
    assert saga_records
    assert all(getattr(r, "order_id", None) in ("traced", "traced-2") for r in saga_records)
