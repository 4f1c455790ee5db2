"""The thin actor shell around an event-sourced state.

The business rules live in pure functions (decide which events happen,
apply an event to the state); this shell only does the I/O: it replays the
journal on start, and persists events before applying them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import pykka

from persistence.journal import Journal

__all__ = ["EventSourcedActor"]

logger = logging.getLogger(__name__)

S = TypeVar("S")


class EventSourcedActor(pykka.ThreadingActor, Generic[S]):
    """A pykka actor whose state is the fold of its journal.

    Subclasses provide `initial_state()` and `apply_event()`; they call
    `persist()` with the events their command handler decided on. A restarted
    incarnation rebuilds the same state in `on_start()`, before it takes its
    first message.
    """

    def __init__(self, journal: Journal, persistence_id: str) -> None:
        super().__init__()
        self.journal = journal
        self.persistence_id = persistence_id
        self.state: S = self.initial_state()
        self.sequence_nr = 0

    def initial_state(self) -> S:
        raise NotImplementedError

    def apply_event(self, state: S, event: Any) -> S:
        """Return the state after `event` (may update `state` in place)."""
        raise NotImplementedError

    def is_journaled(self, event: Any) -> bool:
        """Whether `event` is written to the journal (default: every event)."""
        return True

    def on_start(self) -> None:
        self.recover()

    def recover(self) -> None:
        """Replay the journal into a fresh state."""
        state = self.initial_state()
        count = 0
        for stored in self.journal.replay(self.persistence_id):
            state = self.apply_event(state, stored.event)
            count += 1
        self.state = state
        self.sequence_nr = self.journal.highest_sequence_nr(self.persistence_id)
        if count:
            logger.debug("%s: recovered %d events", self.persistence_id, count)

    def persist(self, events: Sequence[Any]) -> None:
        """Write the journaled `events` in one atomic append, then apply all of them."""
        journaled = [e for e in events if self.is_journaled(e)]
        if journaled:
            self.sequence_nr = self.journal.append(
                self.persistence_id, journaled, self.sequence_nr
            )
        state = self.state
        for event in events:
            state = self.apply_event(state, event)
        self.state = state
