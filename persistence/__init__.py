"""Event-sourced persistence: journals, snapshots, and the event-sourced actor shell.

Generic: nothing here knows about orders. An actor keeps its state as a
journal of events; it persists an event before it acts on it, and rebuilds
its state on start from its latest snapshot and the events after it.
"""

from saga_actors.persistence.eventsourced import EventSourcedActor, wait_for_snapshots
from saga_actors.persistence.journal import (
    ConcurrencyError,
    InMemoryJournal,
    Journal,
    JournalCorrupted,
    JournalInUse,
    JournalWithSnapshots,
    PersistentEvent,
    SelectedSnapshot,
    SnapshotStore,
)
from saga_actors.persistence.lease import Fence, InMemoryLeaseJournal, LeaseLost, LeaseStore, NodeLease
from saga_actors.persistence.postgres import PostgresJournal, PostgresJournalInUse, PostgresUnavailable
from saga_actors.persistence.serialization import EventCodec, SerializationError
from saga_actors.persistence.sqlite import NotAJournal, SQLiteJournal

__all__ = [
    "ConcurrencyError",
    "EventCodec",
    "EventSourcedActor",
    "Fence",
    "InMemoryJournal",
    "InMemoryLeaseJournal",
    "Journal",
    "JournalCorrupted",
    "JournalInUse",
    "JournalWithSnapshots",
    "LeaseLost",
    "LeaseStore",
    "NodeLease",
    "NotAJournal",
    "PersistentEvent",
    "PostgresJournal",
    "PostgresJournalInUse",
    "PostgresUnavailable",
    "SQLiteJournal",
    "SelectedSnapshot",
    "SerializationError",
    "SnapshotStore",
    "wait_for_snapshots",
]
