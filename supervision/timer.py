"""A small timer service: delivers a message to an actor after a delay.

pykka has no scheduler, and an actor must never sleep (it would stop
serving its mailbox), so every delay in the system - retry backoff, attempt
timeouts, simulated network latency - is a message scheduled here. One
thread waits on a heap of due times.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Any, Protocol

import pykka

__all__ = ["Recipient", "Timer", "TimerHandle"]

logger = logging.getLogger(__name__)


class Recipient(Protocol):
    """Anything with `tell`: a pykka ActorRef, or a stable address to one."""

    def tell(self, message: Any) -> None: ...


class TimerHandle:
    """Returned by `Timer.schedule`; `cancel()` stops a pending delivery."""

    __slots__ = ("cancelled", "message", "target")

    def __init__(self, target: Recipient, message: Any) -> None:
        self.target = target
        self.message = message
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Timer:
    """Schedules `target.tell(message)` after `delay` seconds."""

    def __init__(self, name: str = "timer") -> None:
        self._name = name
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        with self._condition:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop delivering; pending messages are dropped."""
        with self._condition:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._heap.clear()
            self._condition.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def schedule(self, delay: float, target: Recipient, message: Any) -> TimerHandle:
        handle = TimerHandle(target, message)
        due = time.monotonic() + max(delay, 0.0)
        with self._condition:
            if self._thread is None:
                raise RuntimeError(f"{self._name} is not running")
            heapq.heappush(self._heap, (due, next(self._counter), handle))
            if self._heap[0][2] is handle:
                self._condition.notify()
        return handle

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopping:
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        self._condition.wait(wait)
                    else:
                        self._condition.wait()
                if self._stopping:
                    return
                due_now = []
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due_now.append(heapq.heappop(self._heap)[2])
            for handle in due_now:
                if not handle.cancelled:
                    self._deliver(handle)

    @staticmethod
    def _deliver(handle: TimerHandle) -> None:
        try:
            handle.target.tell(handle.message)
        except pykka.ActorDeadError:
            # The recipient is gone; whoever relies on this message retries.
            logger.debug("timer: recipient of %s is dead", type(handle.message).__name__)
        except Exception:
            logger.exception("timer: delivering %s failed", type(handle.message).__name__)
