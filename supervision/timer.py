"""A small timer service: delivers a message to an actor after a delay.

pykka has no scheduler, and an actor must never sleep (it would stop
serving its mailbox), so every delay in the system - retry backoff, attempt
timeouts, simulated network latency - is a message scheduled here. One
thread waits on a heap of due times.

Threads: `schedule`, `TimerHandle.cancel`, `start`, `stop`, `pending` and
`is_running` may be called from any thread. `target.tell(message)` and the
`on_died` callback run on the timer's own thread.

Delays: any non-negative number, `math.inf` included ("never, unless
cancelled": the entry is kept until it is cancelled or the timer stops).
NaN and negative delays raise `ValueError` in the caller's thread. However
long the delay, the thread never waits more than `MAX_WAIT` seconds at a
time (`Condition.wait` refuses timeouts above `threading.TIMEOUT_MAX`).

Cancelled entries do not pile up: once they outnumber the live ones, the
heap is rebuilt without them (amortized O(1) per cancel).

The timer cannot die silently: if its thread dies of an unexpected
exception (one raised by a delivery that is not an `Exception`, or a bug
here), the error is logged, the timer stops running (`is_running()` is
False; `schedule` raises `RuntimeError`; pending entries are dropped), and
`on_died(error)` is called. `ResourceActor.start(..., watch=timer.set_on_died)`
turns that into an abnormal exit of the timer's child in the supervision
tree, so its supervisor restarts it (`stop()` then `start()`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import pykka

__all__ = ["MAX_WAIT", "Recipient", "Timer", "TimerHandle"]

logger = logging.getLogger(__name__)

MAX_WAIT = min(60.0, threading.TIMEOUT_MAX)
"""The longest the timer thread waits at a time before it looks at its heap again."""


class Recipient(Protocol):
    """Anything with `tell`: a pykka ActorRef, or a stable address to one."""

    def tell(self, message: Any) -> None: ...


class TimerHandle:
    """Returned by `Timer.schedule`; `cancel()` stops a pending delivery.

    `cancel()` is thread-safe and cheap (amortized O(1)); cancelling twice,
    or after the delivery, does nothing. A cancel that races with the
    delivery itself (the entry already taken off the heap, due) may not stop
    it: a recipient must tolerate a late message, e.g. by an attempt number.
    """

    __slots__ = ("_in_heap", "_timer", "cancelled", "message", "target")

    def __init__(self, target: Recipient, message: Any, timer: Timer | None = None) -> None:
        self.target = target
        self.message = message
        self.cancelled = False
        self._timer = timer
        self._in_heap = False  # guarded by the timer's lock

    def cancel(self) -> None:
        if self._timer is None:
            self.cancelled = True
        else:
            self._timer._cancel(self)


_Entry = tuple[float, int, TimerHandle]


class Timer:
    """Schedules `target.tell(message)` after `delay` seconds.

    `on_died(error)`, if given (or set later by `set_on_died`), is called on
    the timer's thread, once, if that thread dies of an unexpected exception;
    by then the timer is no longer running. It must not block for long.
    """

    def __init__(
        self, name: str = "timer", *, on_died: Callable[[BaseException], None] | None = None
    ) -> None:
        self._name = name
        self._heap: list[_Entry] = []
        self._cancelled = 0  # cancelled entries still in the heap
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None  # the current thread; None when not running
        self._died: BaseException | None = None
        self._on_died = on_died

    @property
    def name(self) -> str:
        return self._name

    # --- lifecycle ---

    def start(self) -> None:
        """Start the thread; nothing if it runs already. Works again after `stop()`,
        or after the thread died; entries scheduled before are delivered then."""
        with self._condition:
            if self._thread is not None:
                return
            self._died = None
            thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            thread.start()  # it waits for the lock we hold, so it sees itself current
            self._thread = thread

    def stop(self) -> None:
        """Stop delivering. Pending entries are kept: a supervisor that restarts
        the timer (`start()` again) loses none of them, and `schedule` keeps
        taking entries meanwhile. Waits for the thread to finish a delivery in
        progress (unless called from the timer thread). `clear()` drops them."""
        with self._condition:
            thread, self._thread = self._thread, None
            self._condition.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def clear(self) -> None:
        """Drop every pending entry."""
        with self._condition:
            self._clear()

    def is_running(self) -> bool:
        """True from `start()` until `stop()`, or until the thread dies."""
        with self._condition:
            return self._thread is not None

    def set_on_died(self, on_died: Callable[[BaseException], None] | None) -> None:
        """Replace the callback called (on the timer thread) if the thread dies.

        Made to be passed as `ResourceActor.start(..., watch=timer.set_on_died)`.
        """
        with self._condition:
            self._on_died = on_died

    # --- scheduling ---

    def schedule(self, delay: float, target: Recipient, message: Any) -> TimerHandle:
        """Deliver `target.tell(message)` after `delay` seconds (>= 0, `math.inf` = never).

        Raises ValueError for a NaN or negative delay. While the timer is not
        running (stopped, or restarting after its thread died) the entry waits
        and is delivered once it runs again: a restart of the timer loses no
        scheduled message.
        """
        if math.isnan(delay) or delay < 0:
            raise ValueError(f"{self._name}: delay must be a non-negative number, got {delay!r}")
        handle = TimerHandle(target, message, self)
        due = time.monotonic() + delay
        with self._condition:
            heapq.heappush(self._heap, (due, next(self._counter), handle))
            handle._in_heap = True
            if self._heap[0][2] is handle:
                self._condition.notify_all()
        return handle

    def pending(self) -> int:
        """How many entries wait to be delivered (cancelled ones not counted)."""
        with self._condition:
            return len(self._heap) - self._cancelled

    def _cancel(self, handle: TimerHandle) -> None:
        with self._condition:
            if handle.cancelled:
                return
            handle.cancelled = True
            if not handle._in_heap:
                return
            self._cancelled += 1
            if self._cancelled * 2 > len(self._heap):
                self._compact()

    def _compact(self) -> None:
        """Rebuild the heap without its cancelled entries (lock held).

        Called when they are more than half of it, so each rebuild costs at
        most twice the cancels since the last one.
        """
        live = []
        for entry in self._heap:
            if entry[2].cancelled:
                entry[2]._in_heap = False
            else:
                live.append(entry)
        heapq.heapify(live)
        self._heap = live
        self._cancelled = 0

    def _clear(self) -> None:
        """Drop every entry (lock held)."""
        for _, _, handle in self._heap:
            handle._in_heap = False
        self._heap = []
        self._cancelled = 0

    # --- the thread ---

    def _run(self) -> None:
        me = threading.current_thread()
        try:
            self._loop(me)
        except BaseException as error:  # reported, never silent
            self._thread_died(me, error)

    def _loop(self, me: threading.Thread) -> None:
        while True:
            with self._condition:
                due_now = self._wait_for_due(me)
                if due_now is None:
                    return
            for index, handle in enumerate(due_now):
                if self._thread is not me:
                    self._put_back(due_now[index:])  # stopped meanwhile: the next thread delivers them
                    return
                if not handle.cancelled:
                    self._deliver(handle)

    def _wait_for_due(self, me: threading.Thread) -> list[TimerHandle] | None:
        """Wait (lock held) until entries are due; take them off the heap.
        None once this thread is no longer the timer's."""
        heap = self._heap
        while self._thread is me:
            heap = self._heap  # a compaction may have replaced it
            while heap and heap[0][2].cancelled:
                heapq.heappop(heap)[2]._in_heap = False
                self._cancelled -= 1
            if not heap:
                self._condition.wait()
                continue
            wait = heap[0][0] - time.monotonic()
            if wait <= 0:
                break
            self._condition.wait(min(wait, MAX_WAIT))
        else:
            return None
        due_now = []
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            handle = heapq.heappop(heap)[2]
            handle._in_heap = False
            if handle.cancelled:
                self._cancelled -= 1
            else:
                due_now.append(handle)
        return due_now

    def _put_back(self, handles: list[TimerHandle]) -> None:
        now = time.monotonic()
        with self._condition:
            for handle in handles:
                if not handle.cancelled:
                    heapq.heappush(self._heap, (now, next(self._counter), handle))
                    handle._in_heap = True

    def _thread_died(self, me: threading.Thread, error: BaseException) -> None:
        with self._condition:
            current = self._thread is me
            if current:
                self._thread = None
                self._died = error
            on_died = self._on_died if current else None
        # If it was stopped or replaced already, nobody relies on it: only log.
        logger.critical("%s: the timer thread died", self._name, exc_info=error)
        if on_died is not None:
            try:
                on_died(error)
            except Exception:
                logger.exception("%s: on_died failed", self._name)

    @staticmethod
    def _deliver(handle: TimerHandle) -> None:
        """Tell one target; its failure (an Exception) does not stop the others."""
        try:
            handle.target.tell(handle.message)
        except pykka.ActorDeadError:
            # The recipient is gone; whoever relies on this message retries.
            logger.debug("timer: recipient of %s is dead", type(handle.message).__name__)
        except Exception:
            logger.exception("timer: delivering %s failed", type(handle.message).__name__)
