"""The saga state machine as pure functions: `decide` and `evolve`.

`decide(definition, state, command, policy, rand)` says which events happen
when something arrives (a reply, a timeout, a retry falling due);
`evolve(state, event)` applies one event. Neither does I/O: the saga actor
journals the events, applies them, and turns some of them into messages.

Durable events (journaled) are the ones recovery needs: the saga started, a
stage started, the commit or abort decision, the end. Bookkeeping events
(attempts, retries) are not journaled: after a crash every step of the
current stage is simply sent again, which idempotent participants absorb.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

from saga_actors.sagas.definition import SagaDefinition
from saga_actors.sagas.policy import RetryPolicy
from saga_actors.sagas.protocol import StepKind

__all__ = [
    "DURABLE_EVENTS",
    "FINAL_EVENTS",
    "AbortDecided",
    "AttemptStarted",
    "AttemptTimedOut",
    "CommitDecided",
    "Replied",
    "Resume",
    "RetryDue",
    "RetryScheduled",
    "SagaAborted",
    "SagaCompleted",
    "SagaStarted",
    "SagaState",
    "StageStarted",
    "Start",
    "TaskRejected",
    "TaskRun",
    "TaskSucceeded",
    "decide",
    "evolve",
]

DO: Final = "do"
UNDO: Final = "undo"

SagaPhase = Literal["new", "forward", "aborting", "done"]
"""Where a saga is: not begun, running its stages, compensating, or finished."""
SagaOutcome = Literal["completed", "aborted"]
TaskStatus = Literal["running", "backoff", "done", "rejected"]

# Reasons the engine itself gives for a rollback.
RETRIES_EXHAUSTED = "retries_exhausted"
INTERRUPTED = "interrupted"


# --- commands: what arrives -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    saga_id: str
    data: Any


@dataclass(frozen=True, slots=True)
class Resume:
    """Sent once after recovery: carry on from the journaled state."""


@dataclass(frozen=True, slots=True)
class Replied:
    kind: StepKind
    step: str
    attempt: int
    ok: bool
    reason: str | None = None
    transient: bool = False


@dataclass(frozen=True, slots=True)
class AttemptTimedOut:
    kind: StepKind
    step: str
    attempt: int


@dataclass(frozen=True, slots=True)
class RetryDue:
    kind: StepKind
    step: str
    attempt: int


# --- events: what happened --------------------------------------------------


@dataclass(frozen=True, slots=True)
class SagaStarted:
    durable: ClassVar[bool] = True
    saga_id: str
    data: Any


@dataclass(frozen=True, slots=True)
class StageStarted:
    durable: ClassVar[bool] = True
    stage: int


@dataclass(frozen=True, slots=True)
class CommitDecided:
    durable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class AbortDecided:
    durable: ClassVar[bool] = True
    reason: str
    failed_step: str | None
    compensate: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SagaCompleted:
    durable: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class SagaAborted:
    durable: ClassVar[bool] = True
    reason: str


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    durable: ClassVar[bool] = False
    kind: StepKind
    step: str
    attempt: int


@dataclass(frozen=True, slots=True)
class TaskSucceeded:
    durable: ClassVar[bool] = False
    kind: StepKind
    step: str


@dataclass(frozen=True, slots=True)
class TaskRejected:
    """A business rejection of a step's action: final, and it had no effect."""

    durable: ClassVar[bool] = False
    step: str
    reason: str


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    durable: ClassVar[bool] = False
    kind: StepKind
    step: str
    attempt: int  # the attempt that will run after the delay
    delay: float
    reason: str


# The events a journal must be able to store, and the ones that end a saga.
DURABLE_EVENTS = (SagaStarted, StageStarted, CommitDecided, AbortDecided, SagaCompleted, SagaAborted)
FINAL_EVENTS = (SagaCompleted, SagaAborted)


# --- state -----------------------------------------------------------------


@dataclass(slots=True)
class TaskRun:
    attempt: int
    status: TaskStatus


@dataclass(slots=True)
class SagaState:
    saga_id: str | None = None
    data: Any = None
    phase: SagaPhase = "new"
    stage: int = 0
    committed: bool = False
    tasks: dict[tuple[str, str], TaskRun] = field(default_factory=dict)
    may_have_effect: set[str] = field(default_factory=set)
    compensate: tuple[str, ...] = ()
    reason: str | None = None
    outcome: SagaOutcome | None = None  # set once done


def evolve(definition: SagaDefinition, state: SagaState, event: Any) -> SagaState:
    """Apply one event (in place) and return the state."""
    match event:
        case SagaStarted(saga_id=saga_id, data=data):
            state.saga_id, state.data, state.phase = saga_id, data, "forward"
        case StageStarted(stage=stage):
            state.stage, state.tasks = stage, {}
            if stage < definition.pivot:
                state.may_have_effect.update(s.name for s in definition.stages[stage])
        case CommitDecided():
            state.committed = True
        case AbortDecided(reason=reason, compensate=compensate):
            state.phase, state.reason, state.compensate = "aborting", reason, compensate
            state.tasks = {}
        case AttemptStarted(kind=kind, step=step, attempt=attempt):
            state.tasks[(kind, step)] = TaskRun(attempt, "running")
        case TaskSucceeded(kind=kind, step=step):
            state.tasks[(kind, step)].status = "done"
        case TaskRejected(step=step):
            state.tasks[(DO, step)].status = "rejected"
            state.may_have_effect.discard(step)
        case RetryScheduled(kind=kind, step=step, attempt=attempt):
            state.tasks[(kind, step)] = TaskRun(attempt, "backoff")
        case SagaCompleted():
            state.phase, state.outcome, state.tasks = "done", "completed", {}
        case SagaAborted(reason=reason):
            state.phase, state.outcome, state.reason, state.tasks = "done", "aborted", reason, {}
        case _:
            raise TypeError(f"unknown saga event {type(event).__name__}")
    return state


def decide(
    definition: SagaDefinition,
    state: SagaState,
    command: Any,
    policy: RetryPolicy,
    rand: Callable[[], float],
) -> list[Any]:
    """The events that `command` causes in `state` (empty if it is stale)."""
    match command:
        case Start(saga_id=saga_id, data=data):
            if state.phase != "new":
                return []
            return [SagaStarted(saga_id, data), *_start_stage(definition, 0)]
        case Resume():
            return _resume(definition, state)
        case Replied():
            run = state.tasks.get((command.kind, command.step))
            if run is None or run.attempt != command.attempt or run.status != "running":
                return []  # a late answer to an attempt we no longer wait for
            if command.ok:
                return _succeeded(definition, state, command.kind, command.step)
            if command.transient or _must_finish(state):
                return _retry(
                    definition,
                    state,
                    command.kind,
                    command.step,
                    run,
                    command.reason or "failed",
                    policy,
                    rand,
                )
            return [
                TaskRejected(command.step, command.reason or "rejected"),
                *_abort(definition, state, command.reason or "rejected", command.step, exclude=command.step),
            ]
        case AttemptTimedOut(kind=kind, step=step, attempt=attempt):
            run = state.tasks.get((kind, step))
            if run is None or run.attempt != attempt or run.status != "running":
                return []
            return _retry(definition, state, kind, step, run, "timeout", policy, rand)
        case RetryDue(kind=kind, step=step, attempt=attempt):
            run = state.tasks.get((kind, step))
            if run is None or run.attempt != attempt or run.status != "backoff":
                return []
            return [AttemptStarted(kind, step, attempt)]
        case _:
            raise TypeError(f"unknown saga command {type(command).__name__}")


def is_durable(event: Any) -> bool:
    return bool(getattr(type(event), "durable", True))


# --- the rules ---------------------------------------------------------------


def _must_finish(state: SagaState) -> bool:
    """After the commit decision, and while compensating, nothing is abandoned."""
    return state.committed or state.phase == "aborting"


def _start_stage(definition: SagaDefinition, stage: int) -> list[Any]:
    events: list[Any] = []
    if stage == definition.pivot:
        events.append(CommitDecided())
    if stage == len(definition.stages):
        return [*events, SagaCompleted()]
    events.append(StageStarted(stage))
    events += [AttemptStarted(DO, s.name, 1) for s in definition.stages[stage]]
    return events


def _succeeded(definition: SagaDefinition, state: SagaState, kind: StepKind, step: str) -> list[Any]:
    events: list[Any] = [TaskSucceeded(kind, step)]
    others_done = all(run.status == "done" for key, run in state.tasks.items() if key != (kind, step))
    if not others_done:
        return events
    if state.phase == "aborting":
        return [*events, SagaAborted(state.reason or "aborted")]
    return events + _start_stage(definition, state.stage + 1)


def _retry(
    definition: SagaDefinition,
    state: SagaState,
    kind: StepKind,
    step: str,
    run: TaskRun,
    reason: str,
    policy: RetryPolicy,
    rand: Callable[[], float],
) -> list[Any]:
    if not _must_finish(state) and run.attempt >= policy.maximum_attempts:
        return _abort(definition, state, RETRIES_EXHAUSTED, step)
    delay = policy.backoff(run.attempt, rand())
    return [RetryScheduled(kind, step, run.attempt + 1, delay, reason)]


def _abort(
    definition: SagaDefinition,
    state: SagaState,
    reason: str,
    failed_step: str | None,
    exclude: str | None = None,
) -> list[Any]:
    """Roll back: compensate every step that succeeded or may have succeeded."""
    compensate = tuple(
        name
        for name in definition.compensable(state.stage)
        if name in state.may_have_effect and name != exclude
    )
    return [AbortDecided(reason, failed_step, compensate), *_abort_tasks(definition, compensate, reason)]


def _abort_tasks(definition: SagaDefinition, compensate: tuple[str, ...], reason: str) -> list[Any]:
    events: list[Any] = [AttemptStarted(UNDO, name, 1) for name in compensate]
    events += [AttemptStarted(DO, s.name, 1) for s in definition.on_abort]
    if not events:
        events.append(SagaAborted(reason))
    return events


def _resume(definition: SagaDefinition, state: SagaState) -> list[Any]:
    if state.phase in ("new", "done"):
        return []
    if state.phase == "aborting":
        return _abort_tasks(definition, state.compensate, state.reason or INTERRUPTED)
    if state.committed:
        # Roll forward: send every step of the current stage again.
        return [AttemptStarted(DO, s.name, 1) for s in definition.stages[state.stage]]
    # No commit decision was recorded: presumed abort.
    return _abort(definition, state, INTERRUPTED, None)
