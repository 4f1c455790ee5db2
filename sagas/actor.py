"""The saga actor: a thin shell that runs one saga's state machine.

It journals the durable events `sagas.engine.decide` returns, applies them,
and turns them into messages: a request to a participant for each attempt,
with a timeout scheduled on the timer; a scheduled retry for each backoff.
It never sleeps, so it can take a reply while it waits for a retry.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import pykka

from saga_actors.persistence.eventsourced import EventSourcedActor
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
from saga_actors.sagas.metrics import Metrics
from saga_actors.sagas.policy import RetryPolicy
from saga_actors.sagas.protocol import Correlation, Reply, Request, StepKind
from saga_actors.supervision.monitor import Monitored
from saga_actors.supervision.timer import Recipient, Timer, TimerHandle

__all__ = ["GetSagaView", "SagaActor", "SagaFinished", "saga_persistence_id"]

logger = logging.getLogger(__name__)


def saga_persistence_id(definition: SagaDefinition, saga_id: str) -> str:
    return f"saga:{definition.name}:{saga_id}"


class GetSagaView:
    """Ask a saga actor for its `SagaView`."""

    __slots__ = ()


class SagaFinished:
    """What the saga's `on_finish` callback receives."""

    __slots__ = ("committed", "reason", "saga_id")

    def __init__(self, saga_id: str, committed: bool, reason: str | None) -> None:
        self.saga_id, self.committed, self.reason = saga_id, committed, reason


class _SagaLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every record with the saga id and attaches the context as `extra`."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        assert self.extra is not None
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return f"[{self.extra['saga_id']}] {msg}", kwargs


class SagaActor(Monitored, EventSourcedActor[SagaState]):
    """Runs one saga of `definition`, identified by `saga_id`.

    Started with `data`, it begins the saga; started without, it recovers
    the saga from the journal and resumes it (rolls forward after the commit
    decision, rolls back before it). `fresh=True` says the saga's stream is
    known to be empty (its first start: no journal read); a restarted
    incarnation given `data` reads the journal and begins only if nothing
    was journaled yet. A recovered saga without the commit decision is
    rolled back (presumed abort) unless `resume_forward` is true: its process
    still holds what the steps need, so it carries on. `on_finish` is called once the end is journaled, in
    this actor's thread, then the actor stops. The metric `sagas_stuck` is
    raised by one while a step that must finish has used up its attempts.
    """

    def __init__(
        self,
        *,
        definition: SagaDefinition,
        saga_id: str,
        journal: JournalWithSnapshots,
        participants: Mapping[str, Recipient],
        timer: Timer,
        policy: RetryPolicy,
        on_finish: Callable[[SagaFinished], None],
        metrics: Metrics,
        data: Any = None,
        ephemeral: Any = None,
        seed: int | str | None = None,
        log_context: Mapping[str, Any] | None = None,
        address: Recipient | None = None,
        fresh: bool = True,
        resume_forward: bool = False,
    ) -> None:
        self.definition = definition
        super().__init__(journal, saga_persistence_id(definition, saga_id))
        self.saga_id = saga_id
        self._participants = participants
        self._timer = timer
        self._policy = policy
        self._on_finish = on_finish
        self._metrics = metrics
        self._start_data = data
        self._fresh = fresh and data is not None
        self._resume_forward = resume_forward
        self._stuck_reported = False
        self._ephemeral = ephemeral
        self._random = random.Random(f"{seed}:{saga_id}")
        self._timeouts: dict[tuple[str, str], tuple[int, TimerHandle]] = {}
        self._finished = False
        self.log = _SagaLog(logger, {"saga_id": saga_id, **(log_context or {})})
        # Where replies and timers reach this saga: its stable address when
        # supervised, so a restarted incarnation gets them.
        self.address: Recipient = address if address is not None else self.actor_ref

    # --- event sourcing ---

    def initial_state(self) -> SagaState:
        return SagaState()

    def apply_event(self, state: SagaState, event: Any) -> SagaState:
        return evolve(self.definition, state, event)

    def is_journaled(self, event: Any) -> bool:
        return is_durable(event)

    # --- lifecycle ---

    def recover(self) -> None:
        if not self._fresh:
            super().recover()
        # A fresh saga's journal is empty (the first append's optimistic
        # concurrency check would refuse it otherwise): no read needed.

    def on_recovered(self) -> None:
        if self._start_data is not None and self.state.phase == "new":
            self._handle(Start(self.saga_id, self._start_data))
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
            self._handle(Resume(forward=self._resume_forward))

    def on_stop(self) -> None:
        self._cancel_timeouts()
        self._report_stuck(False)
        super().on_stop()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._cancel_timeouts()
        self._report_stuck(False)
        super().on_failure(exception_type, exception_value, traceback)

    def handle(self, message: Any) -> Any:
        if isinstance(message, Reply):
            corr = message.correlation
            if corr is None or corr.saga_id != self.saga_id:
                return None
            self._cancel_timeout(corr.kind, corr.step, corr.attempt)
            self._handle(
                Replied(corr.kind, corr.step, corr.attempt, message.ok, message.reason, message.transient)
            )
        elif isinstance(message, (AttemptTimedOut, RetryDue, Replied)):
            self._handle(message)
        elif isinstance(message, GetSagaView):
            return self.view()
        else:
            self.log.warning("unexpected message %s", type(message).__name__)
        return None

    def view(self) -> SagaView:
        """What this saga is doing (runs in the actor's thread)."""
        return view(self.state)

    # --- the loop: decide, journal, apply, act ---

    def _handle(self, command: Any) -> None:
        if self._finished:
            return
        events = decide(self.definition, self.state, command, self._policy, self._random.random)
        if not events:
            return
        self.persist(events)
        for event in events:
            self._react(event)
        if not self._finished:
            self._report_stuck(any(run.stuck for run in self.state.tasks.values()))

    def _react(self, event: Any) -> None:
        match event:
            case AttemptStarted(kind=kind, step=step, attempt=attempt):
                self._send(kind, step, attempt)
            case RetryScheduled(kind=kind, step=step, attempt=attempt, delay=delay, reason=reason):
                self._metrics.increment("retries")
                self.log.debug("%s %s failed (%s); attempt %d in %.3fs", kind, step, reason, attempt, delay)
                self._timer.schedule(delay, self.address, RetryDue(kind, step, attempt))
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
                    self._policy.maximum_interval,
                )
            case TaskRejected(step=step, reason=reason):
                self.log.info("%s rejected: %s", step, reason)
            case AbortDecided(reason=reason, failed_step=failed, compensate=compensate):
                self._cancel_timeouts()
                self._metrics.increment("compensations", len(compensate))
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
        step = self.definition.step(step_name)
        context = SagaContext(self.saga_id, self.state.data, self._ephemeral, self.state.reason)
        command = command_for(step, kind, context)
        correlation = Correlation(self.saga_id, kind, step_name, attempt)
        self._cancel_timeout(kind, step_name)
        self._timeouts[(kind, step_name)] = (
            attempt,
            self._timer.schedule(
                self._policy.attempt_timeout, self.address, AttemptTimedOut(kind, step_name, attempt)
            ),
        )
        try:
            self._participants[step.participant].tell(Request(command, self.address, correlation))
        except pykka.ActorDeadError:
            # The participant is down right now: a transient failure like any other.
            self.actor_ref.tell(Replied(kind, step_name, attempt, False, "unreachable", True))

    def _cancel_timeout(self, kind: StepKind, step: str, attempt: int | None = None) -> None:
        """Cancel the pending timeout of (kind, step) - only of `attempt`, if given:
        a late reply to an earlier attempt must not disarm the current one."""
        pending = self._timeouts.get((kind, step))
        if pending is not None and (attempt is None or pending[0] == attempt):
            del self._timeouts[(kind, step)]
            pending[1].cancel()

    def _cancel_timeouts(self) -> None:
        for _, handle in self._timeouts.values():
            handle.cancel()
        self._timeouts.clear()

    def _report_stuck(self, stuck: bool) -> None:
        if stuck != self._stuck_reported:
            self._stuck_reported = stuck
            self._metrics.increment("sagas_stuck", 1 if stuck else -1)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._cancel_timeouts()
        self._report_stuck(False)
        committed = self.state.outcome == "completed"
        try:
            self._on_finish(SagaFinished(self.saga_id, committed, self.state.reason))
        finally:
            self.stop()
