"""Every caller gets its outcome: no stranded callers, no lost orders, no second writer.

Each fault found by trying the product is a test here, with its right value.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from saga_actors import (
    FaultPlan,
    InvalidOrder,
    JournalInUse,
    OrderSystem,
    RetryPolicy,
    SystemNotRunning,
)
from saga_actors.actors import payment as payment_module
from tests.conftest import DECLINED, assert_consistent, make_request

ROOT = Path(__file__).resolve().parent.parent
FAST = RetryPolicy(initial_interval=0.01, maximum_interval=0.05, maximum_attempts=3)
KILL_RETRY = RetryPolicy(
    initial_interval=0.005, maximum_interval=0.05, maximum_attempts=8, attempt_timeout=0.3
)


def r(order_id: str, **kw: object) -> dict:
    """The README's request: a good card, product 101, quantity 1, amount "1.00"."""
    return make_request(order_id, [(101, 1)], amount="1.00", **kw)  # type: ignore[arg-type]


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        threading.Event().wait(0.005)


# --- 1. a step that never took effect is not compensated; a service that is down does not strand ---


@pytest.mark.parametrize("down", ["inventory", "payment"])
def test_a_service_that_refuses_everything_cancels_the_order_quickly(down):
    faults = {f"{down}_faults": FaultPlan(failure_rate=1.0, seed=1)}
    with OrderSystem(stock={101: 1}, retry=FAST, **faults) as system:
        started = time.monotonic()
        assert system.place_order(r("o-1"), timeout=5) is False
        assert time.monotonic() - started < 2.0
        assert system.order("o-1").reason == "retries_exhausted"
        assert system.wait_idle(5)
        assert system.metrics()["sagas_stuck"] == 0
        # Only what the working service did was undone; nothing was sent to undo at the one that was down.
        assert system.saga("o-1").phase == "aborted"
        assert system.metrics()["compensations"] == 1
        assert_consistent(system, {101: 1})
        if down == "inventory":
            assert system.payments()["o-1"].state == "voided"
        else:
            assert "o-1" not in system.payments()
            assert system.inventory()[101].reserved == 0


# --- 2. a late success (or rejection) is not thrown away: a slow wire fails nothing ---


def test_a_slow_wire_with_no_failures_confirms_every_order():
    slow = FaultPlan(min_latency=0.5, max_latency=1.0, seed=3)
    retry = RetryPolicy(initial_interval=0.01, maximum_interval=0.25, maximum_attempts=6, attempt_timeout=0.5)
    with OrderSystem(stock={101: 5}, retry=retry, inventory_faults=slow, payment_faults=slow) as system:
        futures = [system.submit(r(f"o-{i}")) for i in range(5)]
        assert [f.get(30) for f in futures] == [True] * 5
        assert system.metrics()["retries"] > 0  # every first attempt timed out, and still counted
        assert_consistent(system, {101: 5})


def test_a_slow_wire_reports_out_of_stock_not_retries_exhausted():
    slow = FaultPlan(min_latency=0.5, max_latency=1.0, seed=4)
    retry = RetryPolicy(initial_interval=0.01, maximum_interval=0.25, maximum_attempts=6, attempt_timeout=0.5)
    with OrderSystem(stock={101: 2}, retry=retry, inventory_faults=slow, payment_faults=slow) as system:
        outcomes = [f.get(30) for f in [system.submit(r(f"o-{i}")) for i in range(4)]]
        assert sorted(outcomes) == [False, False, True, True]
        reasons = {v.reason for v in system.orders().values() if v.state == "cancelled"}
        assert reasons == {"insufficient_stock"}
        assert_consistent(system, {101: 2})


def test_no_order_rolls_back_for_retries_exhausted_when_no_service_fails():
    # Every attempt times out before its answer can come back; the answers still settle the steps.
    wire = FaultPlan(min_latency=0.05, max_latency=0.15, seed=5)
    retry = RetryPolicy(initial_interval=0.01, maximum_interval=0.1, maximum_attempts=8, attempt_timeout=0.05)
    stock = {101: 1000}
    with OrderSystem(stock=stock, retry=retry, inventory_faults=wire, payment_faults=wire) as system:
        futures = [system.submit(r(f"o-{i}")) for i in range(300)]
        assert all(f.get(60) for f in futures)
        assert not [v for v in system.orders().values() if v.reason == "retries_exhausted"]
        assert_consistent(system, stock)


# --- 3. a crash of any actor strands no caller and loses no order ---


def running_sagas(system: OrderSystem) -> list[str]:
    return [n for n in system.actor_names() if n.startswith("saga:")]


def storm(tmp_path: Path, target: str, kills: int, orders: int = 500) -> None:
    """Place `orders` with wire latency while `target` is killed `kills` times; then check everything."""
    stock = {1: 200, 2: 200, 3: 200}
    faults = FaultPlan(min_latency=0.001, max_latency=0.01, seed=11)
    requests = [
        make_request(
            f"o{i}",
            [(1 + i % 3, 1 + i % 2)],
            card=DECLINED if i % 13 == 0 else "4242424242424242",
            amount=f"{1 + i % 7}.50",
        )
        for i in range(orders)
    ]
    rng = random.Random(target)
    with OrderSystem(
        journal_path=tmp_path / "o.db",
        stock=stock,
        retry=KILL_RETRY,
        inventory_faults=faults,
        payment_faults=FaultPlan(min_latency=0.001, max_latency=0.01, seed=12),
    ) as system:
        futures = []
        done = 0
        step = orders // (kills + 1)
        for i, request in enumerate(requests):
            futures.append(system.submit(request))
            if i and i % step == 0 and done < kills:
                restarts = system.metrics()["restarts"]
                if target == "sagas":
                    wait_for(lambda: len(running_sagas(system)) >= 5)
                    victims = rng.sample(running_sagas(system), 5)
                    for name in victims:
                        system.kill(name)
                    # each victim restarted, or finished before the kill landed
                    wait_for(
                        lambda restarts=restarts, victims=victims: (
                            system.metrics()["restarts"] > restarts
                            or not set(victims) & set(running_sagas(system))
                        )
                    )
                else:
                    system.kill(target)
                    # rest_for_one: the timer's restart restarts the services and sagas after it
                    group = 3 if target == "timer" else 1
                    wait_for(lambda at_least=restarts + group: system.metrics()["restarts"] >= at_least)
                done += 1
        assert done == kills
        outcomes = {f.order_id: f.get(60) for f in futures}  # every caller answered
        assert system.wait_idle(30)
        views = system.orders()
        assert set(views) == {req["order_id"] for req in requests}  # every submitted order recorded
        for order_id, confirmed in outcomes.items():  # ... with the outcome the journal holds
            assert views[order_id].state == ("confirmed" if confirmed else "cancelled"), order_id
        assert system.metrics()["in_flight"] == 0
        assert system.metrics()["restarts"] >= (kills if target != "sagas" else 1)
        assert_consistent(system, stock)
    # And the journal says the same after a restart.
    with OrderSystem(journal_path=tmp_path / "o.db") as again:
        assert {o: v.state for o, v in again.orders().items()} == {o: v.state for o, v in views.items()}
        assert again.recovery().sagas_resumed == 0


@pytest.mark.parametrize("target", ["orders", "inventory", "payment", "timer", "sagas"])
def test_killing_an_actor_over_and_over_strands_no_caller(tmp_path, target):
    # The timer sits under the root, whose intensity allows 2 restarts in 30 s (the third stops the system).
    storm(tmp_path, target, kills=10 if target != "timer" else 2)


def test_a_third_timer_death_in_30_s_stops_the_system_and_answers_every_caller():
    faults = FaultPlan(min_latency=0.001, max_latency=0.01, seed=11)
    with OrderSystem(stock={101: 500}, inventory_faults=faults, payment_faults=faults) as system:
        futures = [system.submit(r(f"o{i}")) for i in range(200)]
        for _ in range(3):
            restarts = system.metrics()["restarts"]
            system.kill("timer")
            # the timer, then the services and sagas after it (rest_for_one), are back
            wait_for(
                lambda restarts=restarts: system.metrics()["restarts"] >= restarts + 3 or not system.running
            )
        wait_for(lambda: not system.running)
        for future in futures:  # every caller answered: an outcome, or told the system stopped
            try:
                assert future.get(10) in (True, False)
            except SystemNotRunning as stopped:
                assert "more than 2 restarts" in str(stopped)
        assert system.metrics()["in_flight"] == 0


def test_stop_answers_every_waiting_caller_and_start_begins_from_the_journal():
    slow = FaultPlan(min_latency=0.3, max_latency=0.3, seed=1)
    system = OrderSystem(stock={101: 10}, payment_faults=slow).start()
    future = system.submit(r("o-1"))
    wait_for(lambda: system.metrics()["in_flight"] == 1)
    system.stop()
    with pytest.raises(SystemNotRunning):
        future.get(5)
    system.start()
    try:
        assert system.wait_idle(5)  # the in-memory journal's unfinished saga was resumed and ended
        assert system.metrics()["in_flight"] == 0
        assert system.order("o-1").state == "cancelled"  # no commit decision yet: presumed abort
        assert_consistent(system, {101: 10})
    finally:
        system.stop()


# --- 4. one bad message never takes others down ---


def test_a_huge_number_is_refused_and_the_orders_behind_it_are_answered():
    with OrderSystem(stock={101: 200}) as system:
        before = [system.submit(r(f"a{i}")) for i in range(100)]
        with pytest.raises(InvalidOrder):
            system.place_order(r("o-1", user_id=10**5000), timeout=5)
        after = [system.submit(r(f"b{i}")) for i in range(30)]
        assert all(f.get(30) for f in before + after)
        assert system.order("o-1") is None
        assert_consistent(system, {101: 200})


def test_an_unexpected_error_placing_one_order_fails_that_caller_only(monkeypatch):
    from saga_actors.actors import orders

    real = orders.decide

    def buggy(command, state, *journaled):
        if getattr(command, "order", None) is not None and command.order.order_id == "poison":
            raise RuntimeError("a bug")
        return real(command, state, *journaled)

    monkeypatch.setattr(orders, "decide", buggy)
    with OrderSystem(stock={101: 50}) as system:
        good = [system.submit(r(f"g{i}")) for i in range(20)]
        poison = system.submit(r("poison"))
        more = [system.submit(r(f"h{i}")) for i in range(20)]
        with pytest.raises(RuntimeError, match="a bug"):
            poison.get(10)
        assert all(f.get(10) for f in good + more)
        assert system.metrics()["restarts"] == 0
        assert system.wait_idle(5)


def test_a_bug_in_a_participant_after_the_pivot_is_a_stuck_saga_visible_everywhere(monkeypatch, caplog):
    retry = RetryPolicy(initial_interval=0.005, maximum_interval=0.02, maximum_attempts=3)
    real = payment_module.decide
    broken = threading.Event()
    broken.set()

    def capture_breaks(command, state):
        if broken.is_set() and isinstance(command, payment_module.CapturePayment):
            raise RuntimeError("capture is broken")
        return real(command, state)

    monkeypatch.setattr(payment_module, "decide", capture_breaks)
    caplog.set_level(logging.WARNING, logger="saga_actors.sagas")
    with OrderSystem(stock={101: 5}, retry=retry) as system:
        future = system.submit(r("o-1"))
        wait_for(lambda: system.metrics()["sagas_stuck"] == 1)
        saga = system.saga("o-1")
        assert saga.phase == "committed" and saga.stuck
        (pending,) = saga.pending
        assert (pending.step, pending.kind) == ("capture_payment", "do")
        assert pending.last_error == "internal_error: RuntimeError"
        with pytest.raises(TimeoutError) as timed_out:
            future.get(0.2)
        message = str(timed_out.value)
        assert "commit decided; capture_payment pending" in message and "stuck" in message
        wait_for(lambda: system.saga("o-1").pending[0].attempt >= 6)
        stuck_warnings = [rec for rec in caplog.records if "stuck" in rec.getMessage()]
        assert len(stuck_warnings) == 1  # when it becomes stuck, not on every attempt
        assert (
            "[o-1]" in stuck_warnings[0].getMessage() and "capture_payment" in stuck_warnings[0].getMessage()
        )
        assert not next(c for c in system.check_consistency() if c.name == "no saga in flight").ok
        broken.clear()  # the bug is fixed: the saga finishes
        assert future.get(10) is True
        assert system.metrics()["sagas_stuck"] == 0
        assert_consistent(system, {101: 5})


# --- 5. a journal has one writer ---


def test_a_second_system_on_the_same_journal_is_refused_in_the_same_process(tmp_path):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={101: 5}) as first:
        second = OrderSystem(journal_path=path)
        with pytest.raises(JournalInUse) as refused:
            second.start()
        assert refused.value.holder_pid == os.getpid()
        assert first.place_order(r("o-1"), timeout=5) is True  # the holder is unharmed
    with OrderSystem(journal_path=path) as second:
        assert second.order("o-1").state == "confirmed"


HOLDER = textwrap.dedent(
    """
    import sys
    from saga_actors import OrderSystem
    from tests.conftest import make_request
    system = OrderSystem(journal_path=sys.argv[1], stock={101: 5}).start()
    system.place_order(make_request("held", [(101, 1)], amount="1.00"), timeout=10)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_a_journal_held_by_another_process_is_refused_until_that_process_dies(tmp_path):
    path = tmp_path / "o.db"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(JournalInUse) as refused:
            OrderSystem(journal_path=path).start()
        assert refused.value.holder_pid == child.pid
        assert str(child.pid) in str(refused.value)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    with OrderSystem(journal_path=path) as system:  # SIGKILL released it; recovery reads what it held
        assert system.order("held").state == "confirmed"
        assert_consistent(system, {101: 5})


# --- hostile arguments ---


@pytest.mark.parametrize("timeout", [1e10, float("inf"), None, 10**400])
def test_a_huge_timeout_simply_waits(timeout):
    with OrderSystem(stock={101: 1}) as system:
        assert system.place_order(r("o-1"), timeout=timeout) is True
        assert system.wait_idle(1e10)


def test_kill_names_and_unknown_names():
    with OrderSystem(
        stock={101: 1}, payment_faults=FaultPlan(min_latency=0.2, max_latency=0.2, seed=1)
    ) as system:
        future = system.submit(r("o-1"))
        wait_for(lambda: "saga:o-1" in system.actor_names())
        assert system.actor_names()[:4] == ["orders", "inventory", "payment", "timer"]
        system.kill("saga:o-1")
        assert future.get(10) is True  # the saga restarted from its journal and finished
        system.kill("saga:o-1")  # finished: nothing left to kill, not an error
        with pytest.raises(ValueError, match="unknown actor"):
            system.kill("journal")
    with pytest.raises(SystemNotRunning):
        system.kill("orders")


PROGRAM_THAT_FORGETS_STOP = textwrap.dedent(
    """
    import sys
    from saga_actors import OrderSystem
    from tests.conftest import make_request
    system = OrderSystem(journal_path=sys.argv[1], stock={101: 5}).start()
    system.place_order(make_request("o-1", [(101, 1)], amount="1.00"), timeout=10)
    raise SystemExit("the app failed before it called stop()")
    """
)


def test_an_app_that_forgets_stop_still_exits_and_releases_its_journal(tmp_path):
    path = tmp_path / "o.db"
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM_THAT_FORGETS_STOP, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "the app failed" in result.stderr
    with OrderSystem(journal_path=path) as system:
        assert system.order("o-1").state == "confirmed"


def test_an_order_id_holding_a_card_number_is_not_echoed_in_a_conflict():
    from saga_actors import IdempotencyConflict

    with OrderSystem(stock={101: 5}) as system:
        assert system.place_order(r("5105105105105100"), timeout=5)
        with pytest.raises(IdempotencyConflict) as conflict:
            system.place_order(r("5105105105105100", user_id=7), timeout=5)
        assert "5105105105105100" not in str(conflict.value)
        assert conflict.value.order_id == "5105105105105100"


@pytest.mark.parametrize("timeout", [-1, float("nan"), True])
def test_a_meaningless_timeout_is_refused(timeout):
    with OrderSystem(stock={101: 1}) as system:
        future = system.submit(r("o-1"))
        with pytest.raises(ValueError, match="timeout"):
            future.get(timeout)
        with pytest.raises(ValueError, match="timeout"):
            system.wait_idle(timeout)
        assert future.get(5) is True


DISK_FULL = textwrap.dedent(
    """
    import os, resource, signal, sys, threading, logging
    from saga_actors import OrderSystem, FaultPlan, SystemNotRunning
    from tests.conftest import make_request
    logging.disable(logging.CRITICAL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG: a full disk
    path = sys.argv[1]
    def disk_full(full):
        limit = os.path.getsize(path + "-wal") if full else resource.RLIM_INFINITY
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    def r(oid):
        return make_request(oid, [(101, 1)], amount="1.00")
    def outcome(future):
        try:
            return repr(future.get(10))
        except SystemNotRunning:
            return "SystemNotRunning"
    slow = FaultPlan(min_latency=1.0, max_latency=1.0, seed=1)
    system = OrderSystem(journal_path=path, stock={101: 100}, payment_faults=slow).start()
    system.place_order(r("warm"), timeout=10)
    in_flight = system.submit(r("in-flight"))  # its saga waits on a slow wire
    disk_full(True)
    first = system.submit(r("o1"))  # cannot be written: the order service restarts, again and again
    restarts = system.metrics()["restarts"]
    while system.metrics()["restarts"] < restarts + 20:
        threading.Event().wait(0.01)
    second = system.submit(r("o1"))  # the customer retries meanwhile
    disk_full(False)
    print("o1", outcome(first), outcome(second))
    print("placed", system.metrics()["orders_placed"])
    disk_full(True)
    stuck = system.submit(r("o2"))
    restarts = system.metrics()["restarts"]
    while system.metrics()["restarts"] < restarts + 5:
        threading.Event().wait(0.01)
    system.stop()  # must answer every caller, and not raise
    disk_full(False)
    print("after stop", outcome(stuck), outcome(in_flight))
    """
)


def test_a_full_disk_strands_no_caller_and_stop_answers_everyone(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(tmp_path / "o.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["o1"] == "True True"  # both callers of the retried order get its one outcome
    assert lines["placed"] == "3"  # warm, in-flight and o1, each once however often it was retried
    stuck, in_flight = lines["after"].split()[1:]
    assert stuck == "SystemNotRunning"  # its placement never became durable
    assert in_flight in ("True", "SystemNotRunning")  # answered either way, never left waiting


def test_a_meaningless_timeout_places_nothing():
    with OrderSystem(stock={101: 5}) as system:
        for i, timeout in enumerate([float("nan"), -1, "5", True]):
            with pytest.raises(ValueError, match="timeout"):
                system.place_order(r(f"t{i}"), timeout=timeout)
        assert system.wait_idle(5)
        assert system.orders() == {}


class _ExplodingKey:
    def __hash__(self) -> int:
        return hash("order_id")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ exploded")


class _GetRaises(dict):
    def get(self, key, default=None):  # type: ignore[override]
        raise RuntimeError("get exploded")


@pytest.mark.parametrize("request_", [{_ExplodingKey(): 1}, _GetRaises(order_id="x")], ids=["key", "get"])
def test_a_hostile_mapping_is_invalid_through_the_public_api(request_):
    with OrderSystem(stock={101: 5}) as system:
        with pytest.raises(InvalidOrder):
            system.place_order(request_, timeout=5)
        with pytest.raises(InvalidOrder):
            system.submit(request_).get(5)
        assert system.orders() == {}
