"""The thin actor shell around an event-sourced state.

The business rules live in pure functions (decide which events happen,
apply an event to the state); this shell only does the I/O: it replays the
journal on start, and persists events before applying them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import pykka

from saga_actors.persistence.journal import JournalWithSnapshots

__all__ = ["EventSourcedActor"]

logger = logging.getLogger(__name__)

S = TypeVar("S")


class _JournalFailed:
    """Told to an actor whose asynchronous write failed: it stops with the error."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


# Set around `cls.start()` by `start_recovered`; read by `__init__`, which
# pykka runs in the starting thread.
_recovery_waiter: contextvars.ContextVar[pykka.ThreadingFuture[None] | None] = contextvars.ContextVar(
    "recovery_waiter", default=None
)


class EventSourcedActor(pykka.ThreadingActor, Generic[S]):
    """A pykka actor whose state is the fold of its journal.

    Subclasses provide `initial_state()` and `apply_event()`; they call
    `persist()` with the events their command handler decided on. A restarted
    incarnation rebuilds the same state in `on_start()`, before it takes its
    first message.
    """

    def __init__(
        self, journal: JournalWithSnapshots, persistence_id: str, *, snapshot_every: int | None = None
    ) -> None:
        super().__init__()
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1 or None, got {snapshot_every}")
        self.journal = journal
        self.persistence_id = persistence_id
        self.snapshot_every = snapshot_every
        self.state: S = self.initial_state()
        self.sequence_nr = 0
        self._last_snapshot_nr = 0  # the newest snapshot this actor knows of
        self.exit_reason: BaseException | None = None
        self._recovery_waiter = _recovery_waiter.get()

    def initial_state(self) -> S:
        raise NotImplementedError

    def apply_event(self, state: S, event: Any) -> S:
        """Return the state after `event` (may update `state` in place)."""
        raise NotImplementedError

    def is_journaled(self, event: Any) -> bool:
        """Whether `event` is written to the journal (default: every event)."""
        return True

    def on_start(self) -> None:
        try:
            self.recover()
            self.on_recovered()
        except BaseException as error:
            # pykka would only log it: hand it to whoever waits in start_recovered.
            logger.error("%s: recovery failed: %s", self.persistence_id, error)
            self.exit_reason = error
            if self._recovery_waiter is not None:
                self._recovery_waiter.set_exception(exc_info=(type(error), error, error.__traceback__))
            raise
        if self._recovery_waiter is not None:
            self._recovery_waiter.set(None)

    def on_recovered(self) -> None:
        """Called once the state is rebuilt, before the first message (override to act)."""

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _JournalFailed):
            raise message.error
        return self.handle(message)

    def handle(self, message: Any) -> Any:
        """Handle one message (subclasses override)."""
        logger.warning("%s: unexpected message %s", self.persistence_id, type(message).__name__)
        return None

    @classmethod
    def start_recovered(cls, *args: Any, timeout: float | None = None, **kwargs: Any) -> pykka.ActorRef[Any]:
        """Start the actor and wait until it has recovered; raise what recovery raised."""
        waiter: pykka.ThreadingFuture[None] = pykka.ThreadingFuture()
        token = _recovery_waiter.set(waiter)
        try:
            ref = cls.start(*args, **kwargs)
        finally:
            _recovery_waiter.reset(token)
        waiter.get(timeout=timeout)
        return ref

    def recover(self) -> None:
        """Rebuild the state: the latest snapshot, then every event after it."""
        self.journal.flush()  # a predecessor's writes may still be on their way
        state, after = self.initial_state(), 0
        if self.snapshot_every is not None:
            snapshot = self.journal.load_snapshot(self.persistence_id)
            if snapshot is not None:
                state, after = snapshot.snapshot, snapshot.sequence_nr
        self._last_snapshot_nr = after
        count = 0
        for stored in self.journal.replay(self.persistence_id, from_sequence_nr=after + 1):
            state = self.apply_event(state, stored.event)
            count += 1
        self.state = state
        self.sequence_nr = self.journal.highest_sequence_nr(self.persistence_id)
        if count or after:
            logger.debug("%s: recovered from snapshot #%d and %d events", self.persistence_id, after, count)

    def persist(self, events: Sequence[Any]) -> None:
        """Write the journaled `events` in one atomic append, then apply all of them."""
        journaled = [e for e in events if self.is_journaled(e)]
        before = self.sequence_nr
        if journaled:
            self.sequence_nr = self.journal.append(self.persistence_id, journaled, before)
        self._apply(events, before)
        self._snapshot_if_due(before)

    def persist_async(self, events: Sequence[Any], prepare: Callable[[], Callable[[], None]]) -> None:
        """Apply `events` now; tell the world about them once they are in the journal.

        `prepare()` runs here, on the new state, and returns what to do once
        the events are durable (e.g. send a reply worked out from the new
        state); that runs later, in the journal's thread. The actor does not
        wait, so it takes its next message while the journal writes and
        group-commits with other actors. With no events this is a barrier:
        the action runs once everything persisted before is durable. If the
        write fails, the actor's state has run ahead of its journal: it is
        stopped with the error, and a supervisor restarts it from the journal.
        """
        journaled = [e for e in events if self.is_journaled(e)]
        before = self.sequence_nr
        self.sequence_nr = before + len(journaled)
        self._apply(events, before)
        on_durable = prepare()
        actor = self.actor_ref

        def done(highest: int | None, error: BaseException | None) -> None:
            if error is None:
                on_durable()
                return
            with contextlib.suppress(pykka.ActorDeadError):
                actor.tell(_JournalFailed(error))

        try:
            self.journal.append_async(self.persistence_id, journaled, before, done)
        except BaseException:
            self.stop()  # the state already includes events that were never written
            raise
        self._snapshot_if_due(before)

    def _apply(self, events: Sequence[Any], before: int) -> None:
        state = self.state
        for event in events:
            state = self.apply_event(state, event)
        self.state = state

    def _snapshot_if_due(self, before: int) -> None:
        every = self.snapshot_every
        if every is not None and self.sequence_nr // every > before // every:
            # An empty append waits for every earlier write (and fails if one
            # failed), so a snapshot is never ahead of the stored events.
            self.journal.append(self.persistence_id, [], self.sequence_nr)
            self.journal.save_snapshot(self.persistence_id, self.sequence_nr, self.state)
            # Keep the newest two (the one before the newest covers a newest that
            # turns out unreadable); superseded ones only cost space.
            if self._last_snapshot_nr:
                self.journal.delete_snapshots(self.persistence_id, self._last_snapshot_nr - 1)
            self._last_snapshot_nr = self.sequence_nr
