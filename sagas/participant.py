"""The shell shared by every service that takes part in sagas.

A participant answers `Request`s: its pure command handler decides which
events happen, the events are journaled and applied, and the answer is read
from the new state - so a repeated request gets the first result and
changes nothing. Simulated faults (unavailable, crash) strike here, at the
door of the real rules.

Given a `retention` and a timer, the shell also forgets finished work: every
expiry period it decides on `ExpireRetention` (see `sagas/retention.py`),
so the state holds the active entries plus those finished within the window.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import pykka

from saga_actors.persistence.eventsourced import EventSourcedActor
from saga_actors.persistence.journal import JournalWithSnapshots
from saga_actors.persistence.serialization import SerializationError
from saga_actors.sagas.protocol import Reply, Request
from saga_actors.sagas.retention import ExpireRetention, expiry_period
from saga_actors.sagas.simulation import (
    CRASH_AFTER,
    CRASH_BEFORE,
    OK,
    UNAVAILABLE,
    FaultInjector,
    SimulatedCrash,
)
from saga_actors.supervision.monitor import Monitored
from saga_actors.supervision.timer import Timer, TimerHandle

__all__ = ["Answer", "GetState", "ParticipantActor", "ServiceState", "send_reply"]

logger = logging.getLogger(__name__)


class ServiceState(Protocol):
    """What a participant's state offers besides its data: a cheap copy for snapshots and views."""

    def copy(self) -> Self:
        """A copy that later changes to this state do not reach (immutable parts may be shared)."""
        ...


S = TypeVar("S", bound=ServiceState)

Answer = tuple[bool, "str | None"]  # (ok, reason when not ok)


@dataclass(frozen=True, slots=True)
class GetState:
    """Query: a copy of the service's state, as a snapshot would hold it (for tests and audits)."""


class _ExpiryDue:
    """Told by the timer to the incarnation that scheduled it: time to expire finished entries."""

    __slots__ = ()


class ParticipantActor(Monitored, EventSourcedActor[S], Generic[S]):
    """Serves saga requests; subclasses supply the domain's pure functions.

    `retention` (seconds, positive and finite, or None to keep every
    finished entry) is how long finished entries are remembered; with a
    `timer`, the actor expires them every `expiry_period(retention)` seconds
    (a message the timer tells it: it never sleeps). Without a timer,
    entries are expired only when it is told `ExpireRetention`. Its decide
    must handle `ExpireRetention`.
    """

    PERSISTENCE_ID: ClassVar[str]  # each service's one stream in the journal

    def __init__(
        self,
        journal: JournalWithSnapshots,
        faults: FaultInjector | None = None,
        *,
        snapshot_every: int | None = None,
        retention: float | None = None,
        timer: Timer | None = None,
        in_flight_since: Callable[[], float | None] | None = None,
    ) -> None:
        if retention is not None and (
            isinstance(retention, bool)
            or not isinstance(retention, (int, float))
            or not 0 < retention < 10**9  # exact for any int: no float overflow, NaN refused
        ):
            raise ValueError(
                f"retention must be a positive number of seconds below 10**9 or None, got {retention!r:.40}"
            )
        super().__init__(journal, self.PERSISTENCE_ID, snapshot_every=snapshot_every)
        self.faults = faults
        self.retention = retention
        self._timer = timer
        self._in_flight_since = in_flight_since
        self._expiry: TimerHandle | None = None
        self._expiry_due: _ExpiryDue | None = None  # the one this incarnation scheduled last

    def decide(self, command: Any, state: S) -> list[Any]:
        raise NotImplementedError

    def answer(self, command: Any, state: S) -> Answer:
        raise NotImplementedError

    def on_other_message(self, message: Any) -> Any:
        """Handle anything that is not a saga request (views, admin commands)."""
        logger.warning("%s: unexpected message %s", self.persistence_id, type(message).__name__)
        return None

    def snapshot_of(self, state: S) -> S:
        # The state's own copy: its dicts copied, its immutable entries shared. Under
        # 0.1 ms for 10,000 entries, against 38-92 ms to encode them and 76-266 ms to
        # deepcopy them (see EventSourcedActor.snapshot_of). A state without `copy()`
        # is deep-copied: correct, only slower.
        copy = getattr(state, "copy", None)
        return copy() if callable(copy) else super().snapshot_of(state)

    def on_recovered(self) -> None:
        super().on_recovered()
        self._schedule_expiry()

    def on_stop(self) -> None:
        self._cancel_expiry()
        super().on_stop()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._cancel_expiry()
        super().on_failure(exception_type, exception_value, traceback)

    def handle(self, message: Any) -> Any:
        if isinstance(message, Request):
            self._serve(message)
            return None
        if isinstance(message, ExpireRetention):
            self.expire(message)
            return None
        if isinstance(message, _ExpiryDue):
            # One handed over from a failed predecessor is not ours: it would double the schedule.
            if message is self._expiry_due and self.retention is not None:
                since = self._in_flight_since() if self._in_flight_since is not None else None
                self.expire(ExpireRetention(time.time(), self.retention, since))
                self._schedule_expiry()
            return None
        if isinstance(message, GetState):
            return self.snapshot_of(self.state)
        return self.on_other_message(message)

    def expire(self, command: ExpireRetention) -> None:
        """Forget the finished entries past `command`'s window (runs in the actor's thread).

        The `RetentionExpired` event is applied at once and journaled without
        waiting; if the write fails the actor stops, as for any event. A
        `decide` that does not handle `ExpireRetention` (it raises) is logged
        once and expiry stops: finished entries are then kept for ever.
        """
        try:
            events = self.decide(command, self.state)
        except Exception:
            logger.exception(
                "%s: decide does not handle ExpireRetention; finished entries will be kept for ever",
                self.persistence_id,
            )
            self.retention = None  # no more expiry ticks for this incarnation
            return
        if events:
            self.persist_async(events, lambda: _nothing)

    def _schedule_expiry(self) -> None:
        if self._timer is None or self.retention is None:
            return
        self._expiry_due = _ExpiryDue()
        self._expiry = self._timer.schedule(expiry_period(self.retention), self.actor_ref, self._expiry_due)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _serve(self, request: Request) -> None:
        if request.deadline is not None and time.monotonic() > request.deadline:
            # Its sender has given up on it (and may retry): refused before any effect, so a
            # request that spent longer than its deadline on the way never acts late.
            self._reply(request, Reply.unavailable(request.correlation, "expired"))
            return
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
        try:
            self._check_storable(events)
        except SerializationError:
            # The rules produced an event the journal cannot store (its type is not registered):
            # refused, nothing changed, and the other requests are served.
            logger.exception("%s: the events of %s cannot be journaled", self.persistence_id, name)
            self._reply(request, Reply.rejected(request.correlation, "internal_error: SerializationError"))
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
        send_reply(request, reply)


def send_reply(request: Request, reply: Reply) -> None:
    """Tell the request's sender `reply` (from any thread); a sender that is gone is not an error."""
    if request.reply_to is None:
        return
    try:
        request.reply_to.tell(reply)
    except pykka.ActorDeadError:
        logger.debug("reply to a dead requester dropped (%s)", request.correlation)


def _nothing() -> None:
    """What an expiry does once durable: nobody waits for it."""
