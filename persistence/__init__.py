"""Event-sourced persistence: journals and the event-sourced actor shell.

Generic: nothing here knows about orders. An actor keeps its state as a
journal of events; it persists an event before it acts on it, and rebuilds
its state on start by replaying the journal through its event handler.
"""

from persistence.eventsourced import EventSourcedActor
from persistence.journal import (
    ConcurrencyError,
    InMemoryJournal,
    Journal,
    PersistentEvent,
)

__all__ = [
    "ConcurrencyError",
    "EventSourcedActor",
    "InMemoryJournal",
    "Journal",
    "PersistentEvent",
]
