"""Event-sourced persistence: journals, snapshots, and the event-sourced actor shell.

Generic: nothing here knows about orders. An actor keeps its state as a
journal of events; it persists an event before it acts on it, and rebuilds
its state on start from its latest snapshot and the events after it.
"""

from persistence.eventsourced import EventSourcedActor
from persistence.journal import (
    ConcurrencyError,
    InMemoryJournal,
    Journal,
    JournalCorrupted,
    JournalWithSnapshots,
    PersistentEvent,
    SelectedSnapshot,
    SnapshotStore,
)
from persistence.serialization import EventCodec, SerializationError
from persistence.sqlite import SQLiteJournal

__all__ = [
    "ConcurrencyError",
    "EventCodec",
    "EventSourcedActor",
    "InMemoryJournal",
    "Journal",
    "JournalCorrupted",
    "JournalWithSnapshots",
    "PersistentEvent",
    "SQLiteJournal",
    "SelectedSnapshot",
    "SerializationError",
    "SnapshotStore",
]
