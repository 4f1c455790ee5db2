"""The order system's invariants over real service processes, end to end.

`OrderSystem(inventory=URL, payment=URL)` against `saga-actors serve inventory` and `saga-actors
serve payment` as child processes on free ports of 127.0.0.1 (`tests/helpers/services.py`): the
happy path, every business rejection, duplicates, no oversell under 200 concurrent orders,
30 % transient failures. Every test ends with every consistency check passing: stock conserved,
nothing left reserved or authorized, each confirmed order captured exactly its amount - read
from the services over HTTP. The services' own views are read with urllib too, so what is
checked is the processes' state, not the engine's idea of it. (The inventory SIGKILLed mid-run
and restarted on its journal, and the payment SIGSTOPped past the attempt timeout, are
`test_orders_over_service_processes_survive_a_sigkill_and_a_sigstop` in
`tests/test_service_process.py`.) Every wait is bounded; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from saga_actors import OrderSystem, RetryPolicy
from tests.conftest import APPROVED, DECLINED, NO_FUNDS, assert_consistent, make_request
from tests.helpers.services import TOKEN, ServiceProcess, stock

pytest.importorskip("aiohttp")

# An attempt unanswered for a second is retried; ten attempts leave a step failing for good only
# when each of ten independent 30 % refusals comes up (6e-6).
RETRY = RetryPolicy(initial_interval=0.01, maximum_interval=0.05, maximum_attempts=10, attempt_timeout=1.0)
ANSWER = 30.0  # seconds an order may take to be answered


@contextlib.contextmanager
def services(
    tmp_path: Path, initial: dict[int, int], *faults: str
) -> Iterator[tuple[OrderSystem, ServiceProcess, ServiceProcess]]:
    """Both services as processes (the inventory stocked with `initial`, both with `faults`), and a
    started order system over them: (system, inventory, payment); everything stopped afterwards."""
    stocked = ",".join(f"{product}={units}" for product, units in initial.items())
    inventory = ServiceProcess(
        "inventory", tmp_path / "inventory.db", "--stock", stocked, *faults, "--seed", "1"
    )
    payment = ServiceProcess("payment", tmp_path / "payment.db", *faults, "--seed", "2")
    with inventory, payment:
        system = OrderSystem(
            journal_path=tmp_path / "orders.db",
            inventory=inventory.url,
            payment=payment.url,
            service_token=TOKEN,
            retry=RETRY,
        )
        with system:
            yield system, inventory, payment


def settled(system: OrderSystem, initial: dict[int, int]) -> None:
    """Nothing in flight, and every consistency check passes across the processes."""
    assert system.wait_idle(ANSWER)
    assert_consistent(system, initial)


def test_happy_path(tmp_path: Path) -> None:
    initial = {101: 10, 102: 5}
    with services(tmp_path, initial) as (system, inventory, payment):
        assert system.place_order(make_request("h1", [(101, 2), (102, 1)]), timeout=ANSWER) is True
        assert system.order("h1").state == "confirmed"
        settled(system, initial)
        assert stock(inventory) == {101: (8, 0, 10), 102: (4, 0, 5)}
        assert payment.view("captures") == {"payments": 1, "amounts": {"USD": "19.98"}}
        view = system.payments()["h1"]
        assert (view.state, view.amount) == ("captured", Decimal("19.98"))


REJECTIONS = {
    "r-stock": (make_request("r-stock", [(101, 11)]), "insufficient_stock"),
    "r-unknown": (make_request("r-unknown", [(999, 1)]), "unknown_product"),
    "r-unknown-among": (make_request("r-unknown-among", [(101, 1), (999, 1)]), "unknown_product"),
    "r-declined": (make_request("r-declined", card=DECLINED), "card_declined"),
    "r-funds": (make_request("r-funds", card=NO_FUNDS), "insufficient_funds"),
    "r-expired": (make_request("r-expired", expiry="01/20"), "expired_card"),
}


def test_every_business_rejection_rolls_the_order_back(tmp_path: Path) -> None:
    initial = {101: 10}
    with services(tmp_path, initial) as (system, inventory, payment):
        futures = {order_id: system.submit(request) for order_id, (request, _) in REJECTIONS.items()}
        for order_id, (_, reason) in REJECTIONS.items():
            assert futures[order_id].get(ANSWER) is False, order_id
            view = system.order(order_id)
            assert (view.state, view.reason) == ("cancelled", reason), order_id
        settled(system, initial)
        assert stock(inventory) == {101: (10, 0, 10)}
        payments = payment.view("payments")["payments"]
        assert {payment["state"] for payment in payments.values()} <= {"voided"}  # authorized, then undone
        assert payment.view("captures")["payments"] == 0


def test_duplicates_have_one_effect(tmp_path: Path) -> None:
    initial = {101: 10}
    with services(tmp_path, initial) as (system, inventory, payment):
        request = make_request("dup", [(101, 3)], amount="29.97")
        with ThreadPoolExecutor(8) as pool:  # the same order submitted by 8 callers at once
            outcomes = list(pool.map(lambda _: system.place_order(request, timeout=ANSWER), range(8)))
        assert outcomes == [True] * 8
        assert system.place_order(request, timeout=ANSWER) is True  # and again, later
        settled(system, initial)
        assert system.metrics()["duplicates"] == 8
        assert stock(inventory)[101] == (7, 0, 10)
        assert payment.view("captures") == {"payments": 1, "amounts": {"USD": "29.97"}}


def test_no_oversell_under_200_concurrent_orders(tmp_path: Path) -> None:
    initial = {7: 50}
    with services(tmp_path, initial) as (system, inventory, payment):
        futures = [system.submit(make_request(f"c{n}", [(7, 1)], amount="1.00")) for n in range(200)]
        outcomes = [future.get(ANSWER) for future in futures]
        assert outcomes.count(True) == 50
        assert {system.order(f"c{n}").reason for n in range(200)} == {None, "insufficient_stock"}
        settled(system, initial)
        assert stock(inventory)[7] == (0, 0, 50)
        assert payment.view("captures") == {"payments": 50, "amounts": {"USD": "50.00"}}


def test_thirty_percent_transient_failures_end_every_order(tmp_path: Path) -> None:
    initial = {101: 1000, 7: 30}
    with services(tmp_path, initial, "--failure-rate", "0.3") as (system, inventory, payment):
        requests = [
            make_request(
                f"f{n}", [(7 if n % 2 else 101, 1)], amount="2.50", card=DECLINED if n % 9 == 4 else APPROVED
            )
            for n in range(120)
        ]
        futures = [system.submit(request) for request in requests]
        outcomes = [future.get(ANSWER) for future in futures]
        assert True in outcomes and False in outcomes
        settled(system, initial)
        assert system.metrics()["retries"] > 0  # the refusals happened, and were retried
        states: dict[str, Any] = {r["order_id"]: system.order(r["order_id"]).state for r in requests}
        assert set(states.values()) == {"confirmed", "cancelled"}
        assert stock(inventory)[7][1:] == (0, 30)
        confirmed = [o for o, state in states.items() if state == "confirmed"]
        assert payment.view("captures") == {
            "payments": len(confirmed),
            "amounts": {"USD": str(Decimal("2.50") * len(confirmed))},
        }
