"""The journal contract and an in-memory journal.

A journal stores, per *persistence id*, an append-only sequence of events
numbered 1, 2, 3, ... Appends are atomic per batch and guarded by optimistic
concurrency: the writer says which sequence number it last saw, so two
incarnations of one actor can never interleave their events.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "AppendCallback",
    "ConcurrencyError",
    "InMemoryJournal",
    "Journal",
    "JournalCorrupted",
    "JournalInUse",
    "JournalWithSnapshots",
    "PersistentEvent",
    "SelectedSnapshot",
    "SnapshotStore",
]

MAX_SEQUENCE_NR = 2**63 - 1

AppendCallback = Callable[["int | None", "BaseException | None"], None]


class ConcurrencyError(Exception):
    """An append did not start right after the journal's highest sequence number."""


class JournalCorrupted(Exception):
    """Stored data cannot be trusted; names the persistence id and sequence number.

    Recovery stops on it: bad data is never skipped silently.
    """

    def __init__(self, persistence_id: str, sequence_nr: int, problem: str) -> None:
        self.persistence_id = persistence_id
        self.sequence_nr = sequence_nr
        super().__init__(f"{persistence_id} #{sequence_nr}: {problem}")


class JournalInUse(RuntimeError):
    """The journal is already open for writing elsewhere: a journal has one writer.

    `path` is the journal's path as given; `holder_pid` is the process id the
    holder recorded, or None if it is not known (yet). The holder may be this
    very process, when a second journal object is opened on the same path.
    """

    def __init__(self, path: str, holder_pid: int | None) -> None:
        self.path = path
        self.holder_pid = holder_pid
        if holder_pid is None:
            message = f"journal {path} is in use by another process (pid not recorded); stop it first"
        elif holder_pid == os.getpid():
            message = (
                f"journal {path} is in use by process {holder_pid} (this process: another "
                "journal object has it open); close that one first"
            )
        else:
            message = f"journal {path} is in use by process {holder_pid}; stop that process first"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[JournalInUse], tuple[str, int | None]]:
        return type(self), (self.path, self.holder_pid)


@dataclass(frozen=True, slots=True)
class PersistentEvent:
    """One stored event with its position in its persistence id's history."""

    persistence_id: str
    sequence_nr: int
    event: Any
    timestamp: float


@dataclass(frozen=True, slots=True)
class SelectedSnapshot:
    persistence_id: str
    sequence_nr: int
    snapshot: Any
    timestamp: float


class Journal(Protocol):
    """What every journal backend provides (see tests/test_journal_contract.py)."""

    def append(self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int) -> int:
        """Store `events` atomically after `expected_sequence_nr`; return the new highest.

        Raises ConcurrencyError if `expected_sequence_nr` is not the current
        highest sequence number of `persistence_id`.
        """
        ...

    def append_async(
        self,
        persistence_id: str,
        events: Sequence[Any],
        expected_sequence_nr: int,
        on_done: AppendCallback,
    ) -> None:
        """Like `append`, without waiting: `on_done(new_highest, None)` once the
        events are durable, or `on_done(None, error)`; possibly from another thread.

        Appends (and empty ones, which are barriers) complete in the order
        they were made; a value that cannot be stored raises here, at once.
        """
        ...

    def replay(
        self,
        persistence_id: str,
        from_sequence_nr: int = 1,
        to_sequence_nr: int = MAX_SEQUENCE_NR,
        max_count: int = MAX_SEQUENCE_NR,
    ) -> list[PersistentEvent]:
        """Events with from <= sequence_nr <= to, oldest first, at most `max_count`."""
        ...

    def highest_sequence_nr(self, persistence_id: str) -> int:
        """The highest sequence number ever written (kept after deletion); 0 if none."""
        ...

    def persistence_ids(self, prefix: str = "") -> list[str]:
        """Every persistence id with at least one write, sorted, filtered by prefix."""
        ...

    def open_persistence_ids(self, prefix: str, final_types: tuple[type, ...]) -> list[str]:
        """Ids with the prefix whose last event is not of one of `final_types`, sorted.

        How a restart finds the unfinished work (sagas without a final event)
        without reading every stream. A stream whose last event was deleted
        counts as open.
        """
        ...

    def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        """Delete the events up to and including `to_sequence_nr`."""
        ...

    def flush(self) -> None:
        """Return once every write submitted before the call is done (durable or failed).

        Recovery starts with it: a restarted actor must not read its history
        while its predecessor's asynchronous writes are still on their way.
        """
        ...

    def open(self) -> None:
        """(Re)acquire resources after `close()`; a new journal is already open."""
        ...

    def close(self) -> None:
        """Release resources; the journal must not be used until opened again."""
        ...


class SnapshotStore(Protocol):
    """Snapshots of an actor's state, so recovery need not replay from the start."""

    def save_snapshot(self, persistence_id: str, sequence_nr: int, snapshot: Any) -> None:
        """Store `snapshot` as the state after event `sequence_nr` (replacing one there)."""
        ...

    def load_snapshot(
        self, persistence_id: str, max_sequence_nr: int = MAX_SEQUENCE_NR
    ) -> SelectedSnapshot | None:
        """The most recent snapshot at or below `max_sequence_nr`, if any."""
        ...

    def delete_snapshots(self, persistence_id: str, max_sequence_nr: int) -> None:
        """Delete the snapshots at or below `max_sequence_nr` (superseded ones); later ones stay.

        After Akka's `deleteSnapshots(persistenceId, SnapshotSelectionCriteria(maxSequenceNr))`.
        Deleting what is not there is not an error.
        """
        ...


class InMemoryJournal:
    """A journal and snapshot store in dicts: fast, thread-safe, gone with the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[PersistentEvent]] = {}
        self._highest: dict[str, int] = {}
        self._snapshots: dict[str, dict[int, SelectedSnapshot]] = {}

    def append(self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int) -> int:
        with self._lock:
            highest = self._highest.get(persistence_id, 0)
            if expected_sequence_nr != highest:
                raise ConcurrencyError(
                    f"{persistence_id}: expected sequence number "
                    f"{expected_sequence_nr}, journal is at {highest}"
                )
            now = time.time()
            stored = self._events.setdefault(persistence_id, [])
            for offset, event in enumerate(events, start=1):
                stored.append(PersistentEvent(persistence_id, highest + offset, event, now))
            self._highest[persistence_id] = highest + len(events)
            return highest + len(events)

    def append_async(
        self,
        persistence_id: str,
        events: Sequence[Any],
        expected_sequence_nr: int,
        on_done: AppendCallback,
    ) -> None:
        try:
            highest = self.append(persistence_id, events, expected_sequence_nr)
        except ConcurrencyError as error:
            on_done(None, error)
        else:
            on_done(highest, None)

    def replay(
        self,
        persistence_id: str,
        from_sequence_nr: int = 1,
        to_sequence_nr: int = MAX_SEQUENCE_NR,
        max_count: int = MAX_SEQUENCE_NR,
    ) -> list[PersistentEvent]:
        with self._lock:
            stored = list(self._events.get(persistence_id, ()))
        selected = [e for e in stored if from_sequence_nr <= e.sequence_nr <= to_sequence_nr]
        return selected[: max(max_count, 0)]

    def highest_sequence_nr(self, persistence_id: str) -> int:
        with self._lock:
            return self._highest.get(persistence_id, 0)

    def persistence_ids(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(p for p in self._highest if p.startswith(prefix))

    def open_persistence_ids(self, prefix: str, final_types: tuple[type, ...]) -> list[str]:
        with self._lock:
            return sorted(
                p
                for p, events in self._events.items()
                if p.startswith(prefix)
                and not (
                    events
                    and events[-1].sequence_nr == self._highest[p]
                    and isinstance(events[-1].event, final_types)
                )
            )

    def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        with self._lock:
            stored = self._events.get(persistence_id, [])
            self._events[persistence_id] = [e for e in stored if e.sequence_nr > to_sequence_nr]

    def save_snapshot(self, persistence_id: str, sequence_nr: int, snapshot: Any) -> None:
        # A deep copy: the actor goes on changing its state in place.
        stored = SelectedSnapshot(persistence_id, sequence_nr, copy.deepcopy(snapshot), time.time())
        with self._lock:
            self._snapshots.setdefault(persistence_id, {})[sequence_nr] = stored

    def delete_snapshots(self, persistence_id: str, max_sequence_nr: int) -> None:
        with self._lock:
            stored = self._snapshots.get(persistence_id, {})
            for sequence_nr in [n for n in stored if n <= max_sequence_nr]:
                del stored[sequence_nr]

    def load_snapshot(
        self, persistence_id: str, max_sequence_nr: int = MAX_SEQUENCE_NR
    ) -> SelectedSnapshot | None:
        with self._lock:
            candidates = [
                s for n, s in self._snapshots.get(persistence_id, {}).items() if n <= max_sequence_nr
            ]
        if not candidates:
            return None
        best = max(candidates, key=lambda s: s.sequence_nr)
        return SelectedSnapshot(
            best.persistence_id, best.sequence_nr, copy.deepcopy(best.snapshot), best.timestamp
        )

    def flush(self) -> None:
        pass  # every write is done when its call returns

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass


class JournalWithSnapshots(Journal, SnapshotStore, Protocol):
    """A backend that stores both events and snapshots (every backend here does)."""
