"""Fault tests of the whole order system under supervision: real crashes."""

from __future__ import annotations

import threading
import time

import pykka
import pytest

from saga_actors.actors import FaultPlan, OrderSystem, RetryPolicy, SystemNotRunning
from saga_actors.supervision import Intensity
from tests.conftest import APPROVED, DECLINED, assert_consistent, make_request

RETRY = RetryPolicy(initial_interval=0.002, maximum_interval=0.02, maximum_attempts=8, attempt_timeout=0.2)


def orders_for(n: int, products: int = 3) -> list[dict]:
    return [
        make_request(
            f"o{i}",
            [(1 + i % products, 1 + i % 2)],
            card=DECLINED if i % 11 == 0 else APPROVED,
            amount=f"{2 + i % 5}.25",
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("journal", [False, True], ids=["in-memory", "sqlite"])
def test_services_that_crash_hundreds_of_times_keep_every_invariant(tmp_path, journal):
    stock = {1: 80, 2: 80, 3: 80}
    system = OrderSystem(
        journal_path=tmp_path / "o.db" if journal else None,
        stock=stock,
        inventory_faults=FaultPlan(crash_rate=0.15, failure_rate=0.05, max_latency=0.002, seed=21),
        payment_faults=FaultPlan(crash_rate=0.15, failure_rate=0.05, max_latency=0.002, seed=22),
        retry=RETRY,
        snapshot_every=20,
    )
    with system:
        futures = [system.submit(r) for r in orders_for(400)]
        outcomes = [f.get(60) for f in futures]
        assert system.wait_idle(30)
        metrics = system.metrics()
        assert metrics["restarts"] >= 100, metrics
        assert metrics["orders_confirmed"] + metrics["orders_cancelled"] == 400
        assert sum(outcomes) == metrics["orders_confirmed"] > 0
        assert_consistent(system, stock)
        # ... and it keeps serving after all those crashes.
        assert system.place_order(make_request("after", [(1, 1)]), timeout=30) in (True, False)
        assert_consistent(system, stock)


def test_a_killed_service_comes_back_with_its_state(tmp_path):
    with OrderSystem(journal_path=tmp_path / "o.db", stock={1: 10}) as system:
        assert system.place_order(make_request("a", [(1, 3)]), timeout=5)
        before = (system.inventory(), system.payments())
        system.kill("inventory")
        system.kill("payment")
        # queries wait out the restart and see the state rebuilt from the journal
        assert (system.inventory(), system.payments()) == before
        assert system.place_order(make_request("b", [(1, 3)]), timeout=5)
        assert system.metrics()["restarts"] >= 2
        assert_consistent(system, {1: 10})


def test_a_crashed_saga_is_restarted_and_resumes_from_its_journal():
    # Slow services keep the sagas in flight (before their commit decision) while we kill them.
    slow = FaultPlan(min_latency=0.05, max_latency=0.05, seed=1)
    with OrderSystem(
        stock={1: 50}, inventory_faults=slow, payment_faults=slow, retry=RetryPolicy(attempt_timeout=0.5)
    ) as system:
        futures = [system.submit(make_request(f"s{i}", [(1, 1)])) for i in range(20)]
        deadline = time.monotonic() + 5
        while len(victims := [n for n in system.actor_names() if n.startswith("saga:")]) < 20:
            assert time.monotonic() < deadline, "the sagas did not start"
            threading.Event().wait(0.005)
        for name in victims:
            system.kill(name)
        outcomes = [f.get(10) for f in futures]
        assert system.wait_idle(10)
        assert system.metrics()["restarts"] >= len(victims)
        # Restarted in a process that still holds the orders (and cards): they carry on.
        assert outcomes == [True] * 20
        assert_consistent(system, {1: 50})


def test_a_killed_order_service_keeps_its_callers_waiting_for_the_real_outcome():
    slow = FaultPlan(min_latency=0.03, max_latency=0.03, seed=1)
    with OrderSystem(stock={1: 50}, payment_faults=slow) as system:
        futures = [system.submit(make_request(f"w{i}", [(1, 1)])) for i in range(10)]
        system.kill("orders")
        assert [f.get(10) for f in futures] == [True] * 10
        assert_consistent(system, {1: 50})


def test_a_crash_loop_escalates_to_the_root_which_stops_the_system(monkeypatch):
    import saga_actors.actors.system as system_module

    monkeypatch.setattr(system_module, "SERVICES_INTENSITY", Intensity(5, 5.0))
    monkeypatch.setattr(system_module, "ROOT_INTENSITY", Intensity(1, 30.0))
    before = set(pykka.ActorRegistry.get_all())
    system = OrderSystem(stock={1: 10}, inventory_faults=FaultPlan(crash_rate=1.0, seed=1), retry=RETRY)
    system.start()
    try:
        future = system.submit(make_request("doomed", [(1, 1)]))
        with pytest.raises(SystemNotRunning, match="failed"):
            future.get(20)  # the caller is told, not left hanging
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and system.running:
            threading.Event().wait(0.01)
        with pytest.raises(SystemNotRunning, match="more than 5 restarts"):
            system.place_order(make_request("later", [(1, 1)]), timeout=1)
    finally:
        system.stop()
    assert set(pykka.ActorRegistry.get_all()) <= before, "the failed system left actors running"
