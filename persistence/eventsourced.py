"""The thin actor shell around an event-sourced state.

The business rules live in pure functions (decide which events happen,
apply an event to the state); this shell only does the I/O: it replays the
journal on start, and persists events before applying them.

Snapshots cost the actor only a copy of its state: encoding and writing
happen on one shared thread, the snapshot writer, after the events the
snapshot covers are durable (see `_snapshot_if_due`).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import pykka

from saga_actors.persistence.journal import JournalWithSnapshots

__all__ = ["EventSourcedActor", "wait_for_snapshots"]

logger = logging.getLogger(__name__)

S = TypeVar("S")


class _JournalFailed:
    """Told to an actor whose asynchronous write failed: it stops with the error."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _SnapshotWriter:
    """One daemon thread that runs snapshot writes, in the order they are submitted.

    Shared by every event-sourced actor of the process: a snapshot write is
    rare and short next to the events, and one thread keeps the order of one
    actor's snapshots without any bookkeeping. A daemon, so a write in
    progress never holds up the interpreter's exit (the events are the
    truth; a snapshot is only a shortcut).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, write: Callable[[], None]) -> None:
        """Run `write()` on the snapshot writer's thread, after every write submitted before."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)
                self._thread.start()
        self._queue.put(write)

    def _run(self) -> None:
        while True:
            write = self._queue.get()
            try:
                write()
            except Exception:  # each write logs its own failures; this is a last resort
                logger.exception("snapshot write failed")


_snapshot_writer = _SnapshotWriter()


def wait_for_snapshots(timeout: float | None = None) -> bool:
    """Wait until every snapshot handed to the snapshot writer before the call is written (or
    failed); False if some still are not after `timeout` seconds (None: as long as it takes).

    A snapshot is handed over once the events it covers are durable: call the
    journal's `flush()` first to include snapshots whose events are still being
    written. For tests and tools; an actor never needs to wait.
    """
    done = threading.Event()
    _snapshot_writer.submit(done.set)
    return done.wait(timeout)


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
        self._next_snapshot_nr = snapshot_every or 0  # the sequence number at which the next is due
        # The newest snapshot whose events are durable and that waits for the snapshot
        # writer; a newer one replaces it (a backlog of snapshots collapses to the newest).
        self._snapshot_lock = threading.Lock()
        self._snapshot_waiting: tuple[int, S] | None = None
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

    def state_size(self, state: S) -> int:
        """About how many entries `state` holds (default 0): snapshots are spaced by at least this
        many events, so their cost per event stays constant however large the state grows."""
        return 0

    def snapshot_of(self, state: S) -> S:
        """A copy of `state` that the actor's later changes cannot reach, for a snapshot.

        Runs on the actor's thread; the copy is encoded and written on the
        snapshot writer's thread while the actor goes on changing its state.
        The default, `copy.deepcopy`, is correct for any state but slow:
        measured on the inventory, payment and order states with 10,000
        entries each, it took 76-266 ms, 2-3.3x longer than encoding them
        for the journal (38-92 ms), so it would cost the actor more than the
        synchronous snapshot did. Override it with a copy that shares what
        never changes: those states, whose entries are immutable, copy their
        dicts in under 0.1 ms (see `sagas/participant.py`).
        """
        return copy.deepcopy(state)

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
        if self.snapshot_every is not None:
            self._next_snapshot_nr = after + max(self.snapshot_every, self.state_size(state))
        if count or after:
            logger.debug("%s: recovered from snapshot #%d and %d events", self.persistence_id, after, count)

    def persist(self, events: Sequence[Any]) -> None:
        """Write the journaled `events` in one atomic append, then apply all of them."""
        journaled = [e for e in events if self.is_journaled(e)]
        self._check_storable(journaled)
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
        An event of a type the journal's codec does not know raises
        `SerializationError` before anything changes.
        """
        journaled = [e for e in events if self.is_journaled(e)]
        self._check_storable(journaled)
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

    def _check_storable(self, events: Sequence[Any]) -> None:
        """Raise SerializationError if the journal's codec (if it has one) does not know the type
        of one of `events` - before the state changes, so the actor can refuse the command and go
        on. A dict lookup per event; a field of an unregistered type still fails at the write."""
        codec = getattr(self.journal, "codec", None)
        if codec is not None:
            for event in events:
                codec.name_of(type(event))

    def _apply(self, events: Sequence[Any], before: int) -> None:
        state = self.state
        for event in events:
            state = self.apply_event(state, event)
        self.state = state

    def _snapshot_if_due(self, before: int) -> None:
        """Snapshot the state if one is due, without waiting.

        Due `snapshot_every` events after the previous one, or - if the state
        then held more entries (`state_size`) - that many events after it: a
        snapshot costs what the state costs, so spacing them by the state's
        size keeps their cost per event constant (a long retention window
        holding 100,000 finished orders is snapshotted every 100,000 events,
        not every 1,000), and a restart still reads at most one state's worth
        of events after the newest snapshot.

        Here, on the actor's thread: only `snapshot_of` (a copy). Then an
        empty asynchronous append, queued behind this actor's earlier appends,
        completes once they are all durable - or fails if one of them failed
        - and only then is the copy handed to the snapshot writer, which
        encodes it, stores it and deletes superseded snapshots. So a snapshot
        is never ahead of the stored events, and the actor never waits. If
        the writer falls behind, only this actor's newest snapshot waits for
        it (a newer one replaces an older one not yet begun). A snapshot that
        cannot be written is logged and skipped: the events are the truth,
        and the next one is due as if it had been written.
        """
        every = self.snapshot_every
        if every is None or self.sequence_nr < self._next_snapshot_nr:
            return
        self._next_snapshot_nr = self.sequence_nr + max(every, self.state_size(self.state))
        sequence_nr, snapshot = self.sequence_nr, self.snapshot_of(self.state)

        def events_durable(highest: int | None, error: BaseException | None) -> None:
            # In the journal's thread: hand the write over, never do it here.
            if error is None:
                self._hand_over_snapshot(sequence_nr, snapshot)
            else:  # the actor stops with that error (see persist_async)
                logger.info("%s: snapshot #%d skipped: %s", self.persistence_id, sequence_nr, error)

        try:
            self.journal.append_async(self.persistence_id, [], sequence_nr, events_durable)
        except Exception as error:  # the journal is closed, say: the actor is on its way out
            logger.info("%s: snapshot #%d skipped: %s", self.persistence_id, sequence_nr, error)

    def _hand_over_snapshot(self, sequence_nr: int, snapshot: S) -> None:
        """The events up to `sequence_nr` are durable: have the snapshot writer store `snapshot`
        (runs in the journal's thread, or the actor's for a journal that writes at once)."""
        with self._snapshot_lock:
            queued = self._snapshot_waiting is not None
            self._snapshot_waiting = (sequence_nr, snapshot)
        if not queued:
            _snapshot_writer.submit(self._write_waiting_snapshot)

    def _write_waiting_snapshot(self) -> None:
        """Store the snapshot waiting, the newest handed over (runs on the snapshot writer's thread)."""
        with self._snapshot_lock:
            waiting, self._snapshot_waiting = self._snapshot_waiting, None
        if waiting is not None:
            self._write_snapshot(*waiting)

    def _write_snapshot(self, sequence_nr: int, snapshot: S) -> None:
        """Store `snapshot` and delete the superseded ones (runs on the snapshot writer's thread)."""
        try:
            self.journal.save_snapshot(self.persistence_id, sequence_nr, snapshot)
        except Exception as error:
            # Once the actor has stopped, a closed journal is its shutdown, not a problem.
            level = logging.WARNING if self.actor_ref.is_alive() else logging.DEBUG
            logger.log(
                level,
                "%s: snapshot #%d not written (%s: %s); the events are kept, recovery replays them",
                self.persistence_id,
                sequence_nr,
                type(error).__name__,
                error,
            )
            return
        # Keep the newest two (the one before the newest covers a newest that
        # turns out unreadable); superseded ones only cost space. Only this
        # thread changes `_last_snapshot_nr` once the actor has recovered.
        previous, self._last_snapshot_nr = self._last_snapshot_nr, sequence_nr
        if previous:
            try:
                self.journal.delete_snapshots(self.persistence_id, previous - 1)
            except Exception as error:
                logger.warning("%s: superseded snapshots not deleted: %s", self.persistence_id, error)
