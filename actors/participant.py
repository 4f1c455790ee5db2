"""The shell shared by every service that takes part in sagas.

A participant answers `Request`s: its pure command handler decides which
events happen, the events are journaled and applied, and the answer is read
from the new state - so a repeated request gets the first result and
changes nothing. Simulated faults (unavailable, crash) strike here, at the
door of the real rules.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, ClassVar, Generic, TypeVar

import pykka

from saga_actors.actors.simulation import (
    CRASH_AFTER,
    CRASH_BEFORE,
    OK,
    UNAVAILABLE,
    FaultInjector,
    SimulatedCrash,
)
from saga_actors.persistence.eventsourced import EventSourcedActor
from saga_actors.persistence.journal import JournalWithSnapshots
from saga_actors.sagas.protocol import Reply, Request
from saga_actors.supervision.monitor import Monitored

__all__ = ["Answer", "ParticipantActor"]

logger = logging.getLogger(__name__)

S = TypeVar("S")

Answer = tuple[bool, "str | None"]  # (ok, reason when not ok)


class ParticipantActor(Monitored, EventSourcedActor[S], Generic[S]):
    """Serves saga requests; subclasses supply the domain's pure functions."""

    PERSISTENCE_ID: ClassVar[str]  # each service's one stream in the journal

    def __init__(
        self,
        journal: JournalWithSnapshots,
        faults: FaultInjector | None = None,
        *,
        snapshot_every: int | None = None,
    ) -> None:
        super().__init__(journal, self.PERSISTENCE_ID, snapshot_every=snapshot_every)
        self.faults = faults

    def decide(self, command: Any, state: S) -> list[Any]:
        raise NotImplementedError

    def answer(self, command: Any, state: S) -> Answer:
        raise NotImplementedError

    def on_other_message(self, message: Any) -> Any:
        """Handle anything that is not a saga request (views, admin commands)."""
        logger.warning("%s: unexpected message %s", self.persistence_id, type(message).__name__)
        return None

    def handle(self, message: Any) -> Any:
        if isinstance(message, Request):
            self._serve(message)
            return None
        return self.on_other_message(message)

    def _serve(self, request: Request) -> None:
        fate = self.faults.fate() if self.faults is not None else OK
        name = type(request.command).__name__
        if fate == UNAVAILABLE:
            self._reply(request, Reply.unavailable(request.correlation))
            return
        if fate == CRASH_BEFORE:
            raise SimulatedCrash(f"{self.persistence_id} crashed before handling {name}")
        try:
            events = self.decide(request.command, self.state)
        except Exception as error:
            # A bug or a malformed command: refuse this request (nothing changed)
            # and keep serving the others; never take the mailbox down with it.
            logger.exception("%s: %s could not be handled", self.persistence_id, name)
            self._reply(
                request, Reply.rejected(request.correlation, f"internal_error: {type(error).__name__}")
            )
            return
        if fate == CRASH_AFTER:
            self.persist(events)  # the effect is durable; the reply never leaves
            raise SimulatedCrash(f"{self.persistence_id} crashed after handling {name}")
        # Work the reply out now, from the new state; send it once the events are durable.
        self.persist_async(events, lambda: functools.partial(self._reply, request, self._answer(request)))

    def _answer(self, request: Request) -> Reply:
        ok, reason = self.answer(request.command, self.state)
        if ok:
            return Reply.success(request.correlation)
        return Reply.rejected(request.correlation, reason or "rejected")

    @staticmethod
    def _reply(request: Request, reply: Reply) -> None:
        if request.reply_to is None:
            return
        try:
            request.reply_to.tell(reply)
        except pykka.ActorDeadError:
            logger.debug("reply to a dead requester dropped (%s)", request.correlation)
