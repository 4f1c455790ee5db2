"""Group commit: one writer thread that takes queued operations in batches.

Generic, shared by the journals (SQLite, PostgreSQL): each backend says how
to write one batch in one transaction; this module queues the operations,
hands them to the writer thread in batches of at most `max_batch`, and
answers each one - its waiting caller, or its callback - in queue order once
its batch is done.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from saga_actors.persistence.journal import AppendCallback

__all__ = ["QueuedWrite", "WriteQueue"]

logger = logging.getLogger(__name__)

_STOP = object()


class QueuedWrite:
    """One operation for the writer thread: its caller waits until `done` is released, or (with
    a `callback`) nobody waits and the writer calls `callback(result, error)` instead."""

    __slots__ = ("callback", "done", "error", "result")

    def __init__(self, callback: AppendCallback | None = None) -> None:
        self.callback = callback
        self.done = threading.Lock()
        if callback is None:
            self.done.acquire()  # released by the writer: cheaper than an Event
        self.result: Any = None
        self.error: BaseException | None = None


class WriteQueue:
    """The queue of one journal's writer thread ("journal-writer").

    `write(batch)` runs in that thread for each batch of queued operations
    (one transaction, in the backend); it sets each operation's `result` or
    `error`, and must not raise. `name` is what errors and log records call
    the journal. `max_batch` (1: no group commit) bounds a batch.
    """

    def __init__(self, name: str, max_batch: int, write: Callable[[list[Any]], None]) -> None:
        self.name = name
        self._max_batch = max_batch
        self._write = write
        self._lock = threading.Lock()  # nothing is queued behind the writer's stop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="journal-writer", daemon=True)
        self._thread.start()

    def put(self, operation: QueuedWrite) -> None:
        """Queue `operation` (any thread), or raise RuntimeError if the journal is closed.

        Checked and queued under the lock `stop()` takes to queue the writer's
        stop: an operation queued behind it would never be done, and its caller
        would wait for ever.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"journal {self.name} is closed")
            self._queue.put(operation)

    def submit(self, operation: QueuedWrite) -> Any:
        """Queue `operation` and wait until it is done: its result, or raise its error."""
        self.put(operation)
        operation.done.acquire()
        if operation.error is not None:
            raise operation.error
        return operation.result

    def stop(self, after: Callable[[], None] | None = None) -> bool:
        """Finish the queued operations and stop the thread; then `after()` in it (to close its
        connection). False if it was stopped already. Waits for the thread (the caller's)."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._queue.put((_STOP, after))
        self._thread.join()
        return True

    def _loop(self) -> None:
        after: Callable[[], None] | None = None
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if isinstance(item, tuple) and item[0] is _STOP:
                    stopping, after = True, item[1]
            if stopping:
                batch = [op for op in batch if not (isinstance(op, tuple) and op[0] is _STOP)]
            if batch:
                try:
                    self._write(batch)
                except Exception as error:  # a backend's bug: every operation still gets an answer
                    logger.exception("journal %s: write failed", self.name)
                    for operation in batch:
                        if operation.error is None:
                            operation.error, operation.result = error, None
                finally:
                    self._answer(batch)
        if after is not None:
            after()

    def _answer(self, batch: list[QueuedWrite]) -> None:
        for operation in batch:
            if operation.callback is None:
                operation.done.release()
                continue
            try:
                operation.callback(operation.result, operation.error)
            except Exception:
                logger.exception("journal %s: append callback failed", self.name)
