"""The timer service that replaces every sleep."""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from typing import Any

import pykka
import pytest

from saga_actors.supervision.timer import MAX_WAIT, Timer


class Inbox:
    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[float, object]] = queue.Queue()

    def tell(self, message: object) -> None:
        self.messages.put((time.monotonic(), message))


@pytest.fixture
def timer():
    timer = Timer()
    timer.start()
    yield timer
    timer.stop()


def test_delivers_in_due_order_not_schedule_order(timer):
    inbox = Inbox()
    start = time.monotonic()
    timer.schedule(0.06, inbox, "late")
    timer.schedule(0.02, inbox, "early")
    timer.schedule(0.0, inbox, "now")
    received = [inbox.messages.get(timeout=2) for _ in range(3)]
    assert [m for _, m in received] == ["now", "early", "late"]
    assert received[2][0] - start >= 0.06


def test_cancelled_message_is_not_delivered(timer):
    inbox = Inbox()
    timer.schedule(0.01, inbox, "cancelled").cancel()
    timer.schedule(0.03, inbox, "kept")
    assert inbox.messages.get(timeout=2)[1] == "kept"
    assert inbox.messages.empty()


def test_dead_recipient_does_not_stop_the_timer(timer):
    class Echo(pykka.ThreadingActor):
        pass

    dead = Echo.start()
    dead.stop()
    inbox = Inbox()
    timer.schedule(0.0, dead, "lost")
    timer.schedule(0.01, inbox, "delivered")
    assert inbox.messages.get(timeout=2)[1] == "delivered"


def test_an_entry_scheduled_before_the_timer_starts_is_delivered_once_it_runs():
    timer = Timer()
    inbox = Inbox()
    timer.schedule(0.0, inbox, "early")
    assert timer.pending() == 1 and inbox.messages.empty()
    timer.start()
    try:
        assert inbox.messages.get(timeout=2)[1] == "early"
    finally:
        timer.stop()


# --- delays the thread must survive, and delays refused ---


class RecordingCondition(threading.Condition):
    """A Condition that remembers the timeouts its waits were given."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []
        self.waited_with_timeout = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        if timeout is not None:
            self.waited_with_timeout.set()
        return super().wait(timeout)


@pytest.mark.parametrize("huge", [1e10, 1e300, math.inf, threading.TIMEOUT_MAX * 2])
def test_a_huge_delay_does_not_kill_the_thread(timer, huge):
    inbox = Inbox()
    far = timer.schedule(huge, inbox, "never")
    timer.schedule(0.01, inbox, "soon")
    assert inbox.messages.get(timeout=2)[1] == "soon"
    timer.schedule(0.0, inbox, "still alive")
    assert inbox.messages.get(timeout=2)[1] == "still alive"
    assert timer.is_running()
    assert timer.pending() == 1
    far.cancel()
    assert timer.pending() == 0


def test_the_thread_never_waits_longer_than_max_wait():
    timer = Timer()
    condition = RecordingCondition()
    timer._condition = condition
    timer.start()
    try:
        timer.schedule(1e10, Inbox(), "far")
        assert condition.waited_with_timeout.wait(timeout=2)
        assert all(t is None or 0 < t <= MAX_WAIT for t in condition.timeouts)
        assert MAX_WAIT <= threading.TIMEOUT_MAX
    finally:
        timer.stop()


@pytest.mark.parametrize("bad", [math.nan, -0.001, -math.inf])
def test_nan_and_negative_delays_are_refused_in_the_callers_thread(timer, bad):
    with pytest.raises(ValueError, match="non-negative"):
        timer.schedule(bad, Inbox(), "x")
    assert timer.pending() == 0
    assert timer.is_running()


def test_zero_delay_is_accepted(timer):
    inbox = Inbox()
    timer.schedule(0, inbox, "int zero")
    timer.schedule(-0.0, inbox, "negative zero")
    assert {inbox.messages.get(timeout=2)[1] for _ in range(2)} == {"int zero", "negative zero"}


# --- delivery ---


class Failing:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def tell(self, message: object) -> None:
        raise self.error


class Gate:
    """A target whose tell blocks until released: holds the timer thread so
    that what is scheduled meanwhile is due in the same batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def tell(self, message: object) -> None:
        self.entered.set()
        assert self.release.wait(timeout=5)


def test_a_failing_target_does_not_stop_delivery_to_the_others(timer):
    gate, inbox = Gate(), Inbox()
    timer.schedule(0.0, gate, "hold")
    assert gate.entered.wait(timeout=2)
    timer.schedule(0.0, Failing(RuntimeError("boom")), "a")
    timer.schedule(0.0, Failing(pykka.ActorDeadError("gone")), "b")
    timer.schedule(0.0, inbox, "c")
    gate.release.set()
    assert inbox.messages.get(timeout=2)[1] == "c"
    timer.schedule(0.0, inbox, "d")
    assert inbox.messages.get(timeout=2)[1] == "d"
    assert timer.is_running()


def test_stop_keeps_pending_entries_for_the_restart_and_clear_drops_them():
    timer = Timer()
    timer.start()
    inbox = Inbox()
    later = timer.schedule(3600, inbox, "later")
    timer.stop()
    assert not timer.is_running()
    assert timer.pending() == 1  # kept: a restart of the timer loses no scheduled message
    timer.schedule(0.0, inbox, "while stopped")  # taken, delivered once it runs again
    assert timer.pending() == 2 and inbox.messages.empty()
    later.cancel()
    assert timer.pending() == 1
    timer.start()
    try:
        assert inbox.messages.get(timeout=2)[1] == "while stopped"
        timer.schedule(0.0, inbox, "again")
        assert inbox.messages.get(timeout=2)[1] == "again"
        timer.schedule(3600, inbox, "dropped")
        timer.clear()
        assert timer.pending() == 0
        timer.start()  # already running: nothing
        assert timer.is_running()
    finally:
        timer.stop()
    timer.stop()  # twice: nothing


def test_stop_from_a_delivery_on_the_timer_thread_and_restart():
    timer = Timer()
    inbox = Inbox()

    class Stopper:
        def tell(self, message: object) -> None:
            timer.stop()
            timer.start()
            inbox.tell(threading.current_thread().name)

    timer.start()
    try:
        timer.schedule(0.0, Stopper(), "stop")
        assert inbox.messages.get(timeout=2)[1] == "timer"
        timer.schedule(0.0, inbox, "after")
        assert inbox.messages.get(timeout=2)[1] == "after"
        assert sum(t.name == "timer" and t.is_alive() for t in threading.enumerate()) <= 2
    finally:
        timer.stop()


# --- the thread dying is never silent ---


class Poison(BaseException):
    """Not an Exception: a delivery that raises it kills the timer thread."""


def test_a_dying_thread_calls_on_died_and_stops_running(caplog):
    died: queue.Queue[tuple[BaseException, str]] = queue.Queue()
    timer = Timer("poisoned", on_died=lambda e: died.put((e, threading.current_thread().name)))
    timer.start()
    try:
        inbox = Inbox()
        timer.schedule(3600, inbox, "kept")
        poison = Poison("injected")
        timer.schedule(0.0, Failing(poison), "poison")
        error, thread_name = died.get(timeout=2)
        assert error is poison
        assert thread_name == "poisoned"  # on_died runs on the timer thread
        assert not timer.is_running()
        assert timer.pending() == 1  # the poison is gone; the other entry waits for the restart
        timer.schedule(0.0, inbox, "scheduled while dead")
        assert any("died" in r.getMessage() for r in caplog.records)
        timer.stop()
        timer.start()  # the supervisor's restart
        assert inbox.messages.get(timeout=2)[1] == "scheduled while dead"
        timer.schedule(0.0, inbox, "delivered again")
        assert inbox.messages.get(timeout=2)[1] == "delivered again"
    finally:
        timer.stop()


def test_a_bug_in_the_timer_itself_is_reported(monkeypatch):
    died: queue.Queue[BaseException] = queue.Queue()
    timer = Timer()
    timer.set_on_died(died.put)
    original = timer._wait_for_due
    calls = itertools.count()

    def broken(me: threading.Thread) -> list[Any] | None:
        if next(calls) == 1:
            raise ZeroDivisionError("bug")
        return original(me)

    monkeypatch.setattr(timer, "_wait_for_due", broken)
    timer.start()
    try:
        inbox = Inbox()
        timer.schedule(0.0, inbox, "first")  # delivered, then the next wait fails
        assert inbox.messages.get(timeout=2)[1] == "first"
        assert isinstance(died.get(timeout=2), ZeroDivisionError)
        assert not timer.is_running()
    finally:
        timer.stop()


def test_without_on_died_the_death_is_logged(caplog):
    timer = Timer("lonely")
    timer.start()
    try:
        timer.schedule(0.0, Failing(Poison()), "poison")
        deadline = time.monotonic() + 2
        while timer.is_running():  # no callback to wait on: poll the state
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert any(r.levelno == logging.CRITICAL and "lonely" in r.getMessage() for r in caplog.records)
    finally:
        timer.stop()


def test_a_failing_on_died_is_logged_not_raised(caplog):
    died = threading.Event()

    def on_died(error: BaseException) -> None:
        died.set()
        raise RuntimeError("callback bug")

    timer = Timer("t", on_died=on_died)
    timer.start()
    try:
        timer.schedule(0.0, Failing(Poison()), "poison")
        assert died.wait(timeout=2)
        deadline = time.monotonic() + 2
        while not any("on_died failed" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.001)
    finally:
        timer.stop()


# --- cancelled entries do not pile up ---


def _assert_heap_consistent(timer: Timer) -> None:
    with timer._condition:
        heap = timer._heap
        cancelled = sum(entry[2].cancelled for entry in heap)
        assert timer._cancelled == cancelled
        assert all(entry[2]._in_heap for entry in heap)
        assert len(heap) - cancelled == timer.pending()


def test_cancelled_entries_are_compacted(timer):
    inbox = Inbox()
    handles = [timer.schedule(3600, inbox, i) for i in range(10_000)]
    assert timer.pending() == 10_000
    for count, handle in enumerate(handles, 1):
        handle.cancel()
        live = 10_000 - count
        assert len(timer._heap) <= 2 * live + 2
    assert timer.pending() == 0
    assert len(timer._heap) <= 2
    _assert_heap_consistent(timer)


def test_compaction_keeps_the_live_entries(timer):
    inbox = Inbox()
    handles = [timer.schedule(3600, inbox, i) for i in range(1_000)]
    soon = timer.schedule(0.05, inbox, "soon")
    for handle in handles[:900]:
        handle.cancel()
        handle.cancel()  # twice: counted once
    assert timer.pending() == 101
    assert len(timer._heap) <= 2 * 101 + 2
    _assert_heap_consistent(timer)
    assert inbox.messages.get(timeout=2)[1] == "soon"
    soon.cancel()  # after delivery: nothing
    assert timer.pending() == 100
    _assert_heap_consistent(timer)


def test_many_threads_cancelling_concurrently(timer):
    inbox = Inbox()
    far = [timer.schedule(3600, inbox, i) for i in range(20_000)]
    fired = [timer.schedule(0.001 * (i % 20), inbox, f"fire-{i}") for i in range(200)]
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def cancel(part: int) -> None:
        try:
            barrier.wait(timeout=5)
            # every handle to cancel is cancelled by two threads
            for index in range(20_000):
                if index % 10 != 0 and index % threads_n in (part, (part + 1) % threads_n):
                    far[index].cancel()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=cancel, args=(p,)) for p in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(str(inbox.messages.get(timeout=2)[1]) for _ in fired) == sorted(
        f"fire-{i}" for i in range(200)
    )
    assert timer.pending() == 2_000
    assert len(timer._heap) <= 2 * 2_000 + 2
    _assert_heap_consistent(timer)
    assert all(far[i].cancelled == (i % 10 != 0) for i in range(20_000))
