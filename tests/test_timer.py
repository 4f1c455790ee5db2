"""The timer service that replaces every sleep."""

from __future__ import annotations

import queue
import time

import pykka
import pytest

from saga_actors.supervision.timer import Timer


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


def test_schedule_on_stopped_timer_is_an_error():
    with pytest.raises(RuntimeError, match="not running"):
        Timer().schedule(0.1, Inbox(), "x")
