"""Saga actors hosted on a few threads.

Each saga is an actor in the model's sense - its own state, its own journal
stream, its own ordered mailbox, its own supervision - but not a thread of
its own. A `SagaHost` is one pykka actor (one thread) that hosts many sagas,
as an Akka dispatcher or an Orleans silo hosts many actors on few threads;
`SagaHosts` is a fixed set of them, and a saga is reached by its id, which
picks its host by a stable hash. Messages to one saga arrive in the order
they were sent (one host's mailbox is FIFO).

Supervision, after OTP's `simple_one_for_one`: the host supervises its
sagas as transient children. A saga that raises while handling a message
(a bug, a failed journal write, `KillSaga`) is discarded and restarted
alone, from its journal, after a backoff; the messages sent to it meanwhile
wait in its own mailbox and go to the new incarnation. Other sagas on the
same thread are not touched. Past the host's restart intensity the host
fails, and its own supervisor restarts it: the new host resumes every saga
of its shard from the journal.

Event sourcing, after Akka's `EventSourcedBehavior`: a saga applies the
events `sagas.engine.decide` returns at once, appends the durable ones
without waiting (the journal group-commits them with other sagas'), and
runs the side effects that depend on them - sending a request, answering
the callers - in the host's thread once the journal says they are durable.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pykka

from saga_actors.persistence.journal import JournalWithSnapshots
from saga_actors.sagas.definition import SagaContext, SagaDefinition, command_for
from saga_actors.sagas.engine import (
    AbortDecided,
    AttemptStarted,
    AttemptTimedOut,
    CompensationSkipped,
    Replied,
    Resume,
    RetryDue,
    RetryScheduled,
    SagaAborted,
    SagaCompleted,
    SagaState,
    SagaView,
    Start,
    StepStuck,
    TaskRejected,
    TaskSucceeded,
    decide,
    evolve,
    is_durable,
    view,
)
from saga_actors.sagas.metrics import STEP_COMPENSATIONS, STEP_LATENCY, STEP_RETRIES, Metrics
from saga_actors.sagas.policy import RetryPolicy
from saga_actors.sagas.protocol import Correlation, Reply, Request, StepKind
from saga_actors.sagas.redaction import mask_digits
from saga_actors.supervision.address import Address
from saga_actors.supervision.monitor import Monitored
from saga_actors.supervision.spec import Backoff, Intensity, RestartWindow
from saga_actors.supervision.supervisor import Escalated
from saga_actors.supervision.timer import Recipient, Timer, TimerHandle

__all__ = [
    "GetSagaView",
    "KillSaga",
    "SagaFinished",
    "SagaHost",
    "SagaHosts",
    "SagaRef",
    "SagaSpec",
    "StartSaga",
    "saga_persistence_id",
    "shard_of",
]

logger = logging.getLogger(__name__)


def saga_persistence_id(definition: SagaDefinition, saga_id: str) -> str:
    """The journal stream of one saga: `saga:<definition name>:<saga id>`."""
    return f"saga:{definition.name}:{saga_id}"


def shard_of(saga_id: str, shards: int) -> int:
    """The host (0 .. shards - 1) of `saga_id`: stable across processes and restarts."""
    return zlib.crc32(saga_id.encode("utf-8", "surrogatepass")) % shards


# --- messages ---


@dataclass(frozen=True, slots=True)
class SagaSpec:
    """What starts, or resumes, one saga.

    data: given, the saga begins with it unless its journal shows it began;
        None: the saga is recovered from its journal and resumed.
    ephemeral: held in memory only, never journaled (e.g. a card number).
    fresh: the saga's stream is known to be empty (its first start): no
        journal read before the first append.
    resume_forward: a recovered saga without the commit decision carries on
        instead of rolling back (its process still holds `ephemeral`).
    journaled: its start is in the journal already, this many events (what
        `Start` decides that is durable), written by whoever spawned it (a
        cluster node claims a saga id that way): the saga begins as a fresh
        one does, without a journal read and without writing them again.
    log_context: extra fields for every log record of this saga.
    """

    saga_id: str
    data: Any = None
    ephemeral: Any = field(default=None, repr=False)
    fresh: bool = False
    resume_forward: bool = False
    log_context: Mapping[str, Any] | None = None
    journaled: int = 0


@dataclass(frozen=True, slots=True)
class StartSaga:
    """Tell a host to start a saga (ignored if that saga is running already)."""

    spec: SagaSpec


@dataclass(frozen=True, slots=True)
class GetSagaView:
    """Ask a host what one saga is doing: its `SagaView`, or None if it does not run there."""

    saga_id: str


@dataclass(frozen=True, slots=True)
class KillSaga:
    """Make one saga fail, as a crash would (fault tests); its host restarts it."""

    saga_id: str
    reason: str = "killed"


@dataclass(frozen=True, slots=True)
class _Deliver:
    saga_id: str
    message: Any


@dataclass(frozen=True, slots=True)
class _Durable:
    saga_id: str
    incarnation: int
    error: BaseException | None
    effects: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _RestartDue:
    saga_id: str


class SagaFinished:
    """What the hosts' `on_finish` callback receives once a saga's end is durable."""

    __slots__ = ("committed", "reason", "saga_id")

    def __init__(self, saga_id: str, committed: bool, reason: str | None) -> None:
        self.saga_id, self.committed, self.reason = saga_id, committed, reason

    def __repr__(self) -> str:
        return f"SagaFinished({self.saga_id!r}, committed={self.committed}, reason={self.reason!r})"


class SagaCrashed(Exception):
    """Raised inside one saga (by `KillSaga`, or a failed journal write): its host restarts it."""


class SagaRef:
    """Reaches one saga wherever it is hosted: `tell(message)` queues it in the saga's mailbox.

    Raises `pykka.ActorDeadError` while the saga's host is restarting, like
    a dead actor's ref (the sender's retry, or the saga's resend, covers it).
    """

    __slots__ = ("_host", "saga_id")

    def __init__(self, host: Address, saga_id: str) -> None:
        self._host, self.saga_id = host, saga_id

    def __repr__(self) -> str:
        return f"<SagaRef {self.saga_id!r} on {self._host.name}>"

    def tell(self, message: Any) -> None:
        self._host.tell(_Deliver(self.saga_id, message))


class _SagaLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every record with the saga id and attaches the context as `extra`."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return f"[{self.extra['saga_id']}] {msg}", kwargs  # masked (see _Saga)


# --- one saga ---


class _Saga:
    """One incarnation of one saga: its state, its timeouts, its journal stream.

    Runs only in its host's thread.
    """

    def __init__(self, host: SagaHost, spec: SagaSpec, incarnation: int) -> None:
        self.host = host
        self.spec = spec
        self.saga_id = spec.saga_id
        self.incarnation = incarnation
        self.persistence_id = saga_persistence_id(host.definition, spec.saga_id)
        self.ref = SagaRef(host.address, spec.saga_id)
        self.state = SagaState()
        self.sequence_nr = 0
        self.writes_pending = 0
        self.finished = False
        self.stuck_reported = False
        # The attempts in flight: (kind, step) -> (attempt, its timeout, its participant,
        # time.monotonic() when it was sent).
        self.timeouts: dict[tuple[str, str], tuple[int, TimerHandle, str, float]] = {}
        # Attempts in flight when a rollback was decided, no longer awaited: (kind, step, attempt)
        # -> (participant, when sent). Their late replies still count as the step's latency.
        self.abandoned: dict[tuple[str, str, int], tuple[str, float]] = {}
        self._random: random.Random | None = None  # made on first use: most sagas never retry
        self.start_journaled = 0  # the events of its start already in the journal (SagaSpec.journaled)
        context = {
            key: mask_digits(v) if isinstance(v, str) else v for key, v in (spec.log_context or {}).items()
        }
        self.log = _SagaLog(logger, {"saga_id": mask_digits(spec.saga_id), **context})

    # lifecycle

    def begin(self) -> None:
        spec = self.spec
        if spec.journaled and spec.data is not None:
            self.sequence_nr = self.start_journaled = spec.journaled
        elif not (spec.fresh and spec.data is not None):
            self._recover()
        if spec.data is not None and self.state.phase == "new":
            self.host.metrics.saga_began(self.saga_id)
            self.handle(Start(self.saga_id, spec.data))
        elif self.state.phase == "new":
            self.log.warning("nothing journaled: the saga never began")
            self._finish()
        elif self.state.phase == "done":
            self._finish()
        else:
            self.log.info(
                "resuming (%s, stage %d)",
                "committed" if self.state.committed else self.state.phase,
                self.state.stage,
            )
            self.handle(Resume(forward=spec.resume_forward))

    def _recover(self) -> None:
        journal = self.host.journal
        journal.flush()  # a predecessor's writes may still be on their way (blocks briefly)
        definition, state = self.host.definition, SagaState()
        for stored in journal.replay(self.persistence_id):
            state = evolve(definition, state, stored.event)
        self.state = state
        self.sequence_nr = journal.highest_sequence_nr(self.persistence_id)

    def discard(self) -> None:
        """This incarnation is over (crashed, or its host stops): drop its timers."""
        self.finished = True
        self._cancel_timeouts()
        self._report_stuck(False)

    # messages

    def handle(self, message: Any) -> Any:
        if isinstance(message, Reply):
            corr = message.correlation
            if corr is None or corr.saga_id != self.saga_id:
                return None
            answered = self._cancel_timeout(corr.kind, corr.step, corr.attempt)
            if answered is None and self.abandoned:
                answered = self.abandoned.pop((corr.kind, corr.step, corr.attempt), None)
            if answered is not None:  # the reply to the attempt in flight: how long it took
                participant, sent = answered
                self.host.metrics.observe(
                    STEP_LATENCY, time.monotonic() - sent, (participant, corr.step, corr.kind)
                )
            message = Replied(
                corr.kind, corr.step, corr.attempt, message.ok, message.reason, message.transient
            )
        elif isinstance(message, AttemptTimedOut):
            self._timed_out(message.kind, message.step, message.attempt)
        elif not isinstance(message, (RetryDue, Replied, Start, Resume)):
            self.log.warning("unexpected message %s", type(message).__name__)
            return None
        if self.finished:
            return None
        events = decide(self.host.definition, self.state, message, self.host.policy, self._draw)
        if not events:
            return None
        state = self.state
        for event in events:
            state = evolve(self.host.definition, state, event)
        self.state = state
        journaled = [e for e in events if is_durable(e)]
        if self.start_journaled and isinstance(message, Start):
            assert len(journaled) == self.start_journaled, "the journaled start is not what Start decides"
            journaled, self.start_journaled = [], 0  # written by whoever spawned the saga
        # Effects that only touch this saga's own bookkeeping run now; those that
        # reach the world (a request, a scheduled retry, the callers) wait until
        # the events that justify them are durable.
        deferred = []
        for event in events:
            if isinstance(event, (AttemptStarted, RetryScheduled, SagaCompleted, SagaAborted)):
                deferred.append(event)
            else:
                self._react(event)
        if len(deferred) == 1 and isinstance(deferred[0], (SagaCompleted, SagaAborted)):
            self._end(journaled, deferred[0])
        elif journaled or (deferred and self.writes_pending):
            self._append(journaled, tuple(deferred))
        else:
            self.run_effects(tuple(deferred))
        return None

    def _end(self, events: list[Any], final: Any) -> None:
        """Append the saga's end; once it is durable the callers are answered at once, from the
        journal's completion (no hop through the host), and the host forgets the saga."""
        self.discard()  # takes no more messages
        if isinstance(final, SagaCompleted):
            self.log.info("completed")
        else:
            self.log.info("rolled back: %s", final.reason)
        finished = SagaFinished(self.saga_id, self.state.outcome == "completed", self.state.reason)
        host, host_address, saga_id, incarnation = (
            self.host,
            self.host.address,
            self.saga_id,
            self.incarnation,
        )

        def done(highest: int | None, error: BaseException | None) -> None:  # the journal's thread
            if error is None:
                host.ended(self, finished)
                return
            with contextlib.suppress(pykka.ActorDeadError):
                host_address.tell(_Durable(saga_id, incarnation, error, ()))

        before = self.sequence_nr
        self.sequence_nr = before + len(events)
        self.host.journal.append_async(self.persistence_id, events, before, done)

    def _draw(self) -> float:
        """The saga's seeded jitter: the same seed and saga id draw the same sequence."""
        if self._random is None:
            self._random = random.Random(f"{self.host.seed}:{self.saga_id}")
        return self._random.random()

    def _append(self, events: list[Any], effects: tuple[Any, ...]) -> None:
        """Append `events` without waiting; `effects` run in the host once they are durable.

        With no events this is a barrier behind this saga's earlier writes.
        """
        before = self.sequence_nr
        self.sequence_nr = before + len(events)
        self.writes_pending += 1
        host_address, saga_id, incarnation = self.host.address, self.saga_id, self.incarnation

        def done(highest: int | None, error: BaseException | None) -> None:  # the journal's thread
            with contextlib.suppress(pykka.ActorDeadError):
                host_address.tell(_Durable(saga_id, incarnation, error, effects))

        self.host.journal.append_async(self.persistence_id, events, before, done)

    def durable(self, effects: tuple[Any, ...]) -> None:
        self.writes_pending -= 1
        self.run_effects(effects)

    def run_effects(self, effects: tuple[Any, ...]) -> None:
        for event in effects:
            if self.finished:
                return
            self._react(event)
        if not self.finished:
            self._report_stuck(any(run.stuck for run in self.state.tasks.values()))

    def _react(self, event: Any) -> None:
        policy = self.host.policy
        match event:
            case AttemptStarted(kind=kind, step=step, attempt=attempt):
                self._send(kind, step, attempt)
            case RetryScheduled(kind=kind, step=step, attempt=attempt, delay=delay, reason=reason):
                self.host.metrics.increment("retries")
                participant = self.host.definition.step(step).participant
                self.host.metrics.count(STEP_RETRIES, (participant, step, kind))
                self.log.debug("%s %s failed (%s); attempt %d in %.3fs", kind, step, reason, attempt, delay)
                self.host.timer.schedule(delay, self.ref, RetryDue(kind, step, attempt))
            case TaskSucceeded(kind=kind, step=step):
                self._cancel_timeout(kind, step)  # whichever attempt succeeded
            case CompensationSkipped(step=step):
                self._cancel_timeout("undo", step)
                self.log.info("%s never took effect: its compensation is not needed", step)
            case StepStuck(kind=kind, step=step, attempt=attempt, last_error=error):
                self.log.warning(
                    "stuck: %s%s has failed %d attempts (last error: %s); still retrying every %.3g s",
                    step,
                    " (compensation)" if kind == "undo" else "",
                    attempt,
                    error,
                    policy.maximum_interval,
                )
            case TaskRejected(step=step, reason=reason):
                self.log.info("%s rejected: %s", step, reason)
            case AbortDecided(reason=reason, failed_step=failed, compensate=compensate):
                self._cancel_timeouts(abandon=True)
                self.host.metrics.increment("compensations", len(compensate))
                for name in compensate:
                    participant = self.host.definition.step(name).participant
                    self.host.metrics.count(STEP_COMPENSATIONS, (participant, name))
                self.log.info(
                    "rolling back (%s%s); compensating %s",
                    reason,
                    f" at {failed}" if failed else "",
                    list(compensate) or "nothing",
                )
            case SagaCompleted():
                self.log.info("completed")
                self._finish()
            case SagaAborted(reason=reason):
                self.log.info("rolled back: %s", reason)
                self._finish()

    def _send(self, kind: StepKind, step_name: str, attempt: int) -> None:
        """Send the attempt now, or - if its participant already has as many requests from
        this host in flight as it may - once one of them is answered or times out: time
        spent waiting in this host is not counted against the attempt's timeout."""
        self._cancel_timeout(kind, step_name)
        participant = self.host.definition.step(step_name).participant
        if self.host.acquire(participant):
            self.send_now(participant, kind, step_name, attempt)
        else:
            self.host.wait_for_slot(participant, self, kind, step_name, attempt)

    def wants(self, kind: StepKind, step_name: str, attempt: int) -> bool:
        """Whether the attempt is still the one its step waits for (it may have been overtaken)."""
        if self.finished or (kind, step_name) in self.timeouts:
            return False
        run = self.state.tasks.get((kind, step_name))
        return run is not None and run.status == "running" and run.attempt == attempt

    def send_now(self, participant: str, kind: StepKind, step_name: str, attempt: int) -> None:
        """Send the attempt, holding one of `participant`'s slots until its answer or timeout."""
        host = self.host
        step = host.definition.step(step_name)
        context = SagaContext(self.saga_id, self.state.data, self.spec.ephemeral, self.state.reason)
        try:
            command = command_for(step, kind, context)
        except Exception as error:
            # A bug in the step's function, or data it cannot use: nothing was sent, and
            # sending again would fail the same way. The step is refused for good, as a
            # participant refuses a command it cannot handle: before the pivot the saga
            # rolls back; a compensation or a step after it is retried (and reported stuck).
            host.release(participant)
            self.log.exception("%s %s: its command could not be built", kind, step_name)
            # The reason is journaled with a rollback: the error's type only, never its text.
            reason = f"internal_error: {type(error).__name__}"
            self.ref.tell(Replied(kind, step_name, attempt, False, reason, False))
            return
        self.timeouts[(kind, step_name)] = (
            attempt,
            host.timer.schedule(
                host.policy.attempt_timeout, self.ref, AttemptTimedOut(kind, step_name, attempt)
            ),
            participant,
            time.monotonic(),
        )
        try:
            host.participants[participant].tell(
                Request(
                    command,
                    self.ref,
                    Correlation(self.saga_id, kind, step_name, attempt),
                    None if host.request_deadline is None else time.monotonic() + host.request_deadline,
                )
            )
        except pykka.ActorDeadError:
            # The participant is down right now: a transient failure like any other.
            self.ref.tell(Replied(kind, step_name, attempt, False, "unreachable", True))

    def _cancel_timeout(
        self, kind: StepKind, step: str, attempt: int | None = None
    ) -> tuple[str, float] | None:
        """Cancel the pending timeout of (kind, step) - only of `attempt`, if given: a late
        reply to an earlier attempt must not disarm the current one - and free its slot.
        Returns the cancelled attempt's participant and when it was sent (monotonic seconds)."""
        pending = self.timeouts.get((kind, step))
        if pending is not None and (attempt is None or pending[0] == attempt):
            del self.timeouts[(kind, step)]
            pending[1].cancel()
            self.host.release(pending[2])
            return pending[2], pending[3]
        return None

    def _timed_out(self, kind: StepKind, step: str, attempt: int) -> None:
        pending = self.timeouts.get((kind, step))
        if pending is not None and pending[0] == attempt:
            del self.timeouts[(kind, step)]
            self.host.release(pending[2])

    def _cancel_timeouts(self, abandon: bool = False) -> None:
        """Cancel every pending timeout and free its slot; `abandon`: remember the attempts, to
        time their late replies."""
        for (kind, step), (attempt, handle, participant, sent) in self.timeouts.items():
            handle.cancel()
            self.host.release(participant)
            if abandon:
                self.abandoned[(kind, step, attempt)] = (participant, sent)
        self.timeouts.clear()

    def _report_stuck(self, stuck: bool) -> None:
        if stuck != self.stuck_reported:
            self.stuck_reported = stuck
            self.host.metrics.increment("sagas_stuck", 1 if stuck else -1)

    def _finish(self) -> None:
        if self.finished:
            return
        self.discard()
        self.host.saga_finished(
            self, SagaFinished(self.saga_id, self.state.outcome == "completed", self.state.reason)
        )


# --- the host ---


@dataclass(slots=True)
class _Restarting:
    """A saga between incarnations (or running, after a restart): its backoff and its mailbox."""

    spec: SagaSpec
    consecutive: int = 0
    started_at: float = 0.0
    mailbox: deque[Any] = field(default_factory=deque)
    due: TimerHandle | None = None


class SagaHost(Monitored, pykka.ThreadingActor):
    """One thread hosting the sagas of one shard; a `simple_one_for_one` supervisor of them.

    Messages: `StartSaga`, `KillSaga`, `GetSagaView` (ask), and messages for
    one saga through its `SagaRef`. `on_finish` is called in this actor's
    thread once a saga's end is durable; `on_restart(saga_id)` once a saga is
    restarted. `resume()` gives the sagas to resume when this host (re)starts
    (each host keeps those of its own shard). More than `intensity` saga
    restarts make the host fail (escalation to its own supervisor).

    A saga that fails `max_consecutive_failures` times in a row (each within
    the backoff's `reset_after` of its restart: it never gets going) is not
    restarted again: it is *suspended* - a bug or data it cannot handle, not
    a transient fault - so that one poisoned saga cannot make its host, and
    the sagas it hosts, fail. `on_suspend(saga_id, error)` is called then (in
    this actor's thread); the saga stays unfinished in the journal and is
    resumed at the next start.
    """

    def __init__(
        self,
        *,
        definition: SagaDefinition,
        journal: JournalWithSnapshots,
        participants: Mapping[str, Recipient],
        timer: Timer,
        policy: RetryPolicy,
        metrics: Metrics,
        on_finish: Callable[[SagaFinished], None],
        address: Address,
        shard: int = 0,
        shards: int = 1,
        resume: Callable[[], Iterable[SagaSpec]] | None = None,
        on_restart: Callable[[str], None] | None = None,
        on_suspend: Callable[[str, BaseException], None] | None = None,
        max_consecutive_failures: int = 50,
        intensity: Intensity | None = None,
        backoff: Backoff | None = None,
        seed: int | str | None = None,
        max_outstanding: int = 1000,
        request_deadline: float | None = None,
    ) -> None:
        super().__init__()
        if isinstance(max_outstanding, bool) or not isinstance(max_outstanding, int) or max_outstanding < 1:
            raise ValueError(f"max_outstanding must be a positive integer, got {max_outstanding!r}")
        self.definition = definition
        self.journal = journal
        self.participants = participants
        self.timer = timer
        self.policy = policy
        self.metrics = metrics
        self.address = address
        self.seed = seed
        # Seconds after which a participant refuses a request it has not yet served (None: never).
        self.request_deadline = request_deadline
        self._on_finish = on_finish
        self._shard, self._shards = shard, shards
        self._resume = resume
        self._on_restart = on_restart
        self._on_suspend = on_suspend
        self._max_consecutive_failures = max_consecutive_failures
        self._intensity = intensity or Intensity(max_restarts=1000, within_seconds=10.0)
        self._backoff = backoff or Backoff(min_backoff=0.001, max_backoff=0.005, random_factor=0.2)
        self._sagas: dict[str, _Saga] = {}
        self._restarting: dict[str, _Restarting] = {}  # restarted at least once and not finished
        self._restarts = RestartWindow(self._intensity)
        self._max_outstanding = max_outstanding
        self._outstanding: dict[str, int] = {}  # participant -> requests in flight from this host
        self._slot_waiters: dict[str, deque[tuple[_Saga, StepKind, str, int]]] = {}
        self._ended: deque[_Saga] = deque()  # ended durably, to forget (appended by the journal's thread)
        self._incarnations = 0
        self._random = random.Random(f"{seed}:host:{shard}")

    def __str__(self) -> str:
        return f"saga-host-{self._shard}"

    # --- lifecycle (this actor's thread) ---

    def on_start(self) -> None:
        super().on_start()
        if self._resume is not None:
            for spec in self._resume():
                if shard_of(spec.saga_id, self._shards) == self._shard:
                    self._start(spec)

    def on_stop(self) -> None:
        self._discard_all()
        super().on_stop()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._discard_all()
        super().on_failure(exception_type, exception_value, traceback)

    def _discard_all(self) -> None:
        for saga in self._sagas.values():
            saga.discard()
        for entry in self._restarting.values():
            if entry.due is not None:
                entry.due.cancel()
        self._sagas.clear()
        self._restarting.clear()
        self._slot_waiters.clear()
        self._outstanding.clear()

    # --- messages ---

    def on_receive(self, message: Any) -> Any:
        if self._ended:
            self._forget_ended()
        try:
            return self._receive(message)
        finally:
            if any(self._slot_waiters.values()):
                self._send_waiting()

    def _receive(self, message: Any) -> Any:
        match message:
            case _Deliver(saga_id=saga_id, message=inner):
                saga = self._sagas.get(saga_id)
                if saga is not None:
                    self._guarded(saga, saga.handle, inner)
                elif saga_id in self._restarting:
                    self._restarting[saga_id].mailbox.append(inner)
                else:
                    logger.debug(
                        "[%s] %s for a saga not running: dropped", mask_digits(saga_id), type(inner).__name__
                    )
            case _Durable(saga_id=saga_id, incarnation=incarnation, error=error, effects=effects):
                saga = self._sagas.get(saga_id)
                if saga is None or saga.incarnation != incarnation:
                    return None  # an incarnation that is gone
                if error is not None:
                    self._crashed(saga, error)
                else:
                    self._guarded(saga, saga.durable, effects)
            case StartSaga(spec=spec):
                if spec.saga_id in self._sagas or spec.saga_id in self._restarting:
                    logger.debug("[%s] already running", mask_digits(spec.saga_id))
                else:
                    self._start(spec)
            case GetSagaView(saga_id=saga_id):
                saga = self._sagas.get(saga_id)
                return view(saga.state) if saga is not None else None
            case KillSaga(saga_id=saga_id, reason=reason):
                saga = self._sagas.get(saga_id)
                if saga is not None:
                    self._crashed(saga, SagaCrashed(reason))
            case _RestartDue(saga_id=saga_id):
                self._restart(saga_id)
            case _:
                return super().on_receive(message)
        return None

    # --- supervision of the sagas ---

    def _start(self, spec: SagaSpec) -> None:
        self._incarnations += 1
        saga = _Saga(self, spec, self._incarnations)
        self._sagas[spec.saga_id] = saga
        self._guarded(saga, lambda _: saga.begin(), None)

    def _guarded(self, saga: _Saga, handler: Callable[[Any], Any], argument: Any) -> None:
        """Run `handler(argument)` for `saga`; an exception crashes that saga only."""
        try:
            handler(argument)
        except Exception as error:
            self._crashed(saga, error)

    def _crashed(self, saga: _Saga, error: BaseException) -> None:
        saga.log.error("saga failed: %r", error)
        saga.discard()
        if self._sagas.get(saga.saga_id) is saga:
            del self._sagas[saga.saga_id]
        now = time.monotonic()
        entry = self._restarting.get(saga.saga_id)
        if entry is not None and entry.started_at and now - entry.started_at >= self._backoff.reset_after:
            entry.consecutive = 0
        if entry is not None and entry.consecutive >= self._max_consecutive_failures:
            self._suspend(saga.saga_id, entry, error)
            return
        if self._restarts.exceeded(now):
            self.exit_reason = Escalated(
                f"{self}: more than {self._intensity.max_restarts} saga restarts within "
                f"{self._intensity.within_seconds} s (last: {saga.saga_id}: {error!r})"
            )
            logger.error("%s", self.exit_reason)
            self.stop()
            return
        # A restarted saga reads its journal; it keeps what this process holds (its data, e.g. the card).
        spec = SagaSpec(
            saga.saga_id,
            saga.spec.data,
            saga.spec.ephemeral,
            fresh=False,
            resume_forward=saga.spec.data is not None,
            log_context=saga.spec.log_context,
        )
        if entry is None:
            entry = self._restarting[saga.saga_id] = _Restarting(spec)
        else:
            entry.spec = spec
        delay = self._backoff.delay(entry.consecutive, self._random.random())
        entry.consecutive += 1
        entry.due = self.timer.schedule(delay, self.address, _RestartDue(saga.saga_id))

    def _suspend(self, saga_id: str, entry: _Restarting, error: BaseException) -> None:
        logger.error(
            "[%s] saga failed %d times in a row (last: %r): suspended until the next start",
            saga_id,
            entry.consecutive,
            error,
        )
        self._restarting.pop(saga_id, None)
        for message in entry.mailbox:
            logger.debug(
                "[%s] %s dropped with the suspended saga", mask_digits(saga_id), type(message).__name__
            )
        self.metrics.increment("sagas_suspended")
        if self._on_suspend is not None:
            self._on_suspend(saga_id, error)

    def _restart(self, saga_id: str) -> None:
        entry = self._restarting.get(saga_id)
        if entry is None or saga_id in self._sagas:
            return
        entry.due = None
        entry.started_at = time.monotonic()
        self._start(entry.spec)
        saga = self._sagas.get(saga_id)
        if saga is None:
            return  # failed again at once: rescheduled
        logger.info("[%s] saga restarted (restart %d)", mask_digits(saga_id), entry.consecutive)
        if self._on_restart is not None:
            self._on_restart(saga_id)
        while entry.mailbox and self._sagas.get(saga_id) is saga:
            self._guarded(saga, saga.handle, entry.mailbox.popleft())

    # --- a window of requests in flight per participant (a bulkhead) ---

    def acquire(self, participant: str) -> bool:
        """Take one of `participant`'s slots if one is free and nobody waits for one."""
        taken = self._outstanding.get(participant, 0)
        if taken >= self._max_outstanding or self._slot_waiters.get(participant):
            return False
        self._outstanding[participant] = taken + 1
        return True

    def release(self, participant: str) -> None:
        self._outstanding[participant] -= 1

    def wait_for_slot(self, participant: str, saga: _Saga, kind: StepKind, step: str, attempt: int) -> None:
        self._slot_waiters.setdefault(participant, deque()).append((saga, kind, step, attempt))

    def _send_waiting(self) -> None:
        """Send the attempts waiting for a slot, oldest first, as far as slots are free."""
        for participant, waiting in self._slot_waiters.items():
            while waiting and self._outstanding.get(participant, 0) < self._max_outstanding:
                saga, kind, step, attempt = waiting.popleft()
                if self._sagas.get(saga.saga_id) is not saga or not saga.wants(kind, step, attempt):
                    continue  # overtaken meanwhile: nothing to send
                self._outstanding[participant] = self._outstanding.get(participant, 0) + 1
                try:
                    saga.send_now(participant, kind, step, attempt)
                except Exception as error:
                    self._crashed(saga, error)

    def saga_finished(self, saga: _Saga, finished: SagaFinished) -> None:
        """A recovered saga was over already (this actor's thread): forget it, tell the owner."""
        self._forget(saga)
        self.metrics.saga_ended(finished.saga_id, "completed" if finished.committed else "aborted")
        self._on_finish(finished)

    def ended(self, saga: _Saga, finished: SagaFinished) -> None:
        """A saga's end is durable: tell the owner now; the host forgets the saga when it next
        takes a message. Runs in the journal's thread (the host's, for a journal that writes at once)."""
        self._ended.append(saga)
        self.metrics.saga_ended(finished.saga_id, "completed" if finished.committed else "aborted")
        self._on_finish(finished)

    def _forget(self, saga: _Saga) -> None:
        if self._sagas.get(saga.saga_id) is saga:
            del self._sagas[saga.saga_id]
            self._restarting.pop(saga.saga_id, None)

    def _forget_ended(self) -> None:
        ended = self._ended
        while ended:
            self._forget(ended.popleft())


# --- the set of hosts ---


class SagaHosts:
    """A fixed set of `SagaHost`s, each behind a stable `Address`; a saga is reached by its id.

    Thread-safe: `tell`, `ask` and `start` may be called from any thread.
    """

    def __init__(self, name: str, shards: int) -> None:
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be a positive integer, got {shards!r}")
        self.name = name
        self.addresses = tuple(Address(f"{name}-{i}") for i in range(shards))

    def __len__(self) -> int:
        return len(self.addresses)

    def host_of(self, saga_id: str) -> Address:
        return self.addresses[shard_of(saga_id, len(self.addresses))]

    def ref(self, saga_id: str) -> SagaRef:
        return SagaRef(self.host_of(saga_id), saga_id)

    def start(self, spec: SagaSpec) -> None:
        """Start a saga without waiting. Raises `pykka.ActorDeadError` while its host restarts
        (the host resumes it then, if the owner's `resume()` lists it)."""
        self.host_of(spec.saga_id).tell(StartSaga(spec))

    def view(self, saga_id: str, timeout: float) -> SagaView | None:
        """What a running saga is doing; None if it does not run. Raises `pykka.ActorDeadError`
        or `pykka.Timeout` if its host does not answer."""
        result: SagaView | None = self.host_of(saga_id).ask(GetSagaView(saga_id), timeout=timeout)
        return result

    def kill(self, saga_id: str, reason: str = "killed") -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.host_of(saga_id).tell(KillSaga(saga_id, reason))
