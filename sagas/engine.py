"""The saga state machine as pure functions: `decide` and `evolve`.

`decide(definition, state, command, policy, rand)` says which events happen
when something arrives (a reply, a timeout, a retry falling due);
`evolve(state, event)` applies one event. Neither does I/O: the saga actor
journals the events, applies them, and turns some of them into messages.

Durable events (journaled) are the ones recovery needs: the saga started, a
stage started, the commit or abort decision, the end. Bookkeeping events
(attempts, retries) are not journaled: after a crash every step of the
current stage is simply sent again, which idempotent participants absorb.

Which steps a rollback compensates: exactly those for which some attempt
*may* have had an effect. An attempt may have had one until it is answered:
a success certainly did, a timeout may have (the request can still arrive),
a crash of the participant shows up as a timeout. An "unavailable" answer is
by contract a refusal before any effect, and a request that could not be
delivered had none; a business rejection is final and had none. After a
restart the attempts are not known (they are not journaled), so every step
of a started stage counts as possibly done: recovery stays conservative.

A success answering *any* attempt of a step still running is the step's
success (participants are idempotent), so a slow wire does not fail a step
whose first attempt got through after its timeout.
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
    "AttemptRefused",
    "AttemptStarted",
    "AttemptTimedOut",
    "AttemptsTracked",
    "CommitDecided",
    "CompensationSkipped",
    "Replied",
    "Resume",
    "RetryDue",
    "RetryScheduled",
    "SagaAborted",
    "SagaCompleted",
    "SagaStarted",
    "SagaState",
    "SagaView",
    "StageStarted",
    "Start",
    "StepStuck",
    "StepView",
    "TaskRejected",
    "TaskRun",
    "TaskSucceeded",
    "decide",
    "evolve",
    "view",
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
    """Sent once after recovery: carry on from the journaled state.

    Before the commit decision a recovered saga is rolled back (presumed
    abort), unless `forward` says it may carry on: its actor was restarted
    in a process that still holds what the steps need (e.g. the card).
    """

    forward: bool = False


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
class AttemptRefused:
    """An attempt was answered "unavailable" or could not be delivered: it had no effect."""

    durable: ClassVar[bool] = False
    kind: StepKind
    step: str
    attempt: int


@dataclass(frozen=True, slots=True)
class CompensationSkipped:
    """A compensation is dropped: late answers showed its action never took effect."""

    durable: ClassVar[bool] = False
    step: str


@dataclass(frozen=True, slots=True)
class StepStuck:
    """A step that must finish has used up `maximum_attempts`; it keeps being retried."""

    durable: ClassVar[bool] = False
    kind: StepKind
    step: str
    attempt: int
    last_error: str


@dataclass(frozen=True, slots=True)
class AttemptsTracked:
    """The steps of a stage just begun: their attempts are known from now on."""

    durable: ClassVar[bool] = False
    steps: tuple[str, ...]


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
    last_error: str | None = None
    stuck: bool = False


@dataclass(slots=True)
class SagaState:
    saga_id: str | None = None
    data: Any = None
    phase: SagaPhase = "new"
    stage: int = 0
    committed: bool = False
    tasks: dict[tuple[StepKind, str], TaskRun] = field(default_factory=dict)
    # Which actions may have taken effect (see the module docstring):
    uncertain: set[str] = field(default_factory=set)  # started before a restart: unknown
    succeeded: set[str] = field(default_factory=set)  # answered with a success
    unanswered: dict[str, set[int]] = field(default_factory=dict)  # attempts with no no-effect answer
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
                state.uncertain.update(s.name for s in definition.stages[stage])
        case CommitDecided():
            state.committed = True
        case AbortDecided(reason=reason, compensate=compensate):
            state.phase, state.reason, state.compensate = "aborting", reason, compensate
            state.tasks = {}
        case AttemptStarted(kind=kind, step=step, attempt=attempt):
            previous = state.tasks.get((kind, step))
            run = TaskRun(attempt, "running")
            if previous is not None:
                run.last_error, run.stuck = previous.last_error, previous.stuck
            state.tasks[(kind, step)] = run
            if kind == DO:
                state.unanswered.setdefault(step, set()).add(attempt)
        case AttemptsTracked(steps=steps):
            state.uncertain.difference_update(steps)
        case AttemptRefused(kind=kind, step=step, attempt=attempt):
            if kind == DO:
                state.unanswered.get(step, set()).discard(attempt)
        case TaskSucceeded(kind=kind, step=step):
            state.tasks[(kind, step)].status = "done"
            if kind == DO:
                state.succeeded.add(step)
        case TaskRejected(step=step):
            rejected_run = state.tasks.get((DO, step))
            if rejected_run is not None:
                rejected_run.status = "rejected"
            state.uncertain.discard(step)
            state.succeeded.discard(step)
            state.unanswered.pop(step, None)
        case RetryScheduled(kind=kind, step=step, attempt=attempt, reason=reason):
            previous = state.tasks.get((kind, step))
            stuck = previous.stuck if previous is not None else False
            state.tasks[(kind, step)] = TaskRun(attempt, "backoff", reason, stuck)
        case CompensationSkipped(step=step):
            state.tasks[(UNDO, step)].status = "done"
        case StepStuck(kind=kind, step=step):
            state.tasks[(kind, step)].stuck = True
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
        case Resume(forward=forward):
            return _resume(definition, state, forward)
        case Replied():
            run = state.tasks.get((command.kind, command.step))
            if command.ok:
                if run is None or run.status not in ("running", "backoff") or command.attempt > run.attempt:
                    return []  # the step is over (or the answer is to an attempt not yet sent)
                # Any attempt's success is the step's success: participants are idempotent.
                return _succeeded(definition, state, command.kind, command.step)
            events: list[Any] = []
            refused = None
            unanswered = state.unanswered.get(command.step, ())
            if command.transient and command.kind == DO and command.attempt in unanswered:
                events.append(AttemptRefused(command.kind, command.step, command.attempt))
                refused = (command.step, command.attempt)
            current = run is not None and run.attempt == command.attempt and run.status == "running"
            step_open = (
                run is not None and run.status in ("running", "backoff") and command.attempt <= run.attempt
            )
            if not command.transient and not _must_finish(state) and step_open:
                # A business rejection is final, whichever attempt it answers (idempotent participants).
                return [
                    TaskRejected(command.step, command.reason or "rejected"),
                    *_abort(
                        definition, state, command.reason or "rejected", command.step, exclude=command.step
                    ),
                ]
            if state.phase == "aborting" and command.kind == DO:
                # A late answer to an action being compensated: if it shows the
                # action never took effect, its compensation is not needed.
                return events + _skip_needless_compensation(
                    state, command.step, refused, rejected=not command.transient
                )
            if run is None or not current:
                return events  # a late failure of an attempt we no longer wait for
            if command.transient or _must_finish(state):
                return events + _retry(
                    definition,
                    state,
                    command.kind,
                    command.step,
                    run,
                    command.reason or "failed",
                    policy,
                    rand,
                    refused,
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


def may_have_effect(state: SagaState, step: str, refused: tuple[str, int] | None = None) -> bool:
    """Whether some attempt of `step`'s action may have taken effect."""
    if step in state.succeeded or step in state.uncertain:
        return True
    unanswered = state.unanswered.get(step, set())
    if refused is not None and refused[0] == step:
        unanswered = unanswered - {refused[1]}
    return bool(unanswered)


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
    # Live, every attempt of this stage is seen from the first; after a restart
    # (this event is not journaled) they are not, and recovery stays conservative.
    events.append(AttemptsTracked(tuple(s.name for s in definition.stages[stage])))
    return events


def _succeeded(definition: SagaDefinition, state: SagaState, kind: StepKind, step: str) -> list[Any]:
    events: list[Any] = [TaskSucceeded(kind, step)]
    others_done = all(run.status == "done" for key, run in state.tasks.items() if key != (kind, step))
    if not others_done:
        return events
    if state.phase == "aborting":
        return [*events, SagaAborted(state.reason or "aborted")]
    return events + _start_stage(definition, state.stage + 1)


def _skip_needless_compensation(
    state: SagaState, step: str, refused: tuple[str, int] | None, *, rejected: bool
) -> list[Any]:
    undo = state.tasks.get((UNDO, step))
    if undo is None or undo.status not in ("running", "backoff"):
        return []
    if rejected:
        events: list[Any] = [TaskRejected(step, "rejected")]  # a final answer: no attempt had an effect
    elif not may_have_effect(state, step, refused):
        events = []
    else:
        return []
    events.append(CompensationSkipped(step))
    others_done = all(run.status == "done" for key, run in state.tasks.items() if key != (UNDO, step))
    if others_done:
        events.append(SagaAborted(state.reason or "aborted"))
    return events


def _retry(
    definition: SagaDefinition,
    state: SagaState,
    kind: StepKind,
    step: str,
    run: TaskRun,
    reason: str,
    policy: RetryPolicy,
    rand: Callable[[], float],
    refused: tuple[str, int] | None = None,
) -> list[Any]:
    if run.attempt < policy.maximum_attempts:
        return [RetryScheduled(kind, step, run.attempt + 1, policy.backoff(run.attempt, rand()), reason)]
    if not _must_finish(state):
        return _abort(definition, state, RETRIES_EXHAUSTED, step, refused=refused)
    # It must finish, but has used up its attempts: it is stuck. Keep trying,
    # at the longest interval, and say so once.
    events: list[Any] = [] if run.stuck else [StepStuck(kind, step, run.attempt, reason)]
    delay = policy.maximum_interval * (0.5 + 0.5 * rand())
    return [*events, RetryScheduled(kind, step, run.attempt + 1, delay, reason)]


def _abort(
    definition: SagaDefinition,
    state: SagaState,
    reason: str,
    failed_step: str | None,
    exclude: str | None = None,
    refused: tuple[str, int] | None = None,
) -> list[Any]:
    """Roll back: compensate every step whose action may have taken effect.

    `refused` is an attempt whose refusal is being decided in the same breath
    (its AttemptRefused event is not applied yet).
    """
    compensate = tuple(
        name
        for name in definition.compensable(state.stage)
        if name != exclude and may_have_effect(state, name, refused)
    )
    return [AbortDecided(reason, failed_step, compensate), *_abort_tasks(definition, compensate, reason)]


def _abort_tasks(definition: SagaDefinition, compensate: tuple[str, ...], reason: str) -> list[Any]:
    events: list[Any] = [AttemptStarted(UNDO, name, 1) for name in compensate]
    events += [AttemptStarted(DO, s.name, 1) for s in definition.on_abort]
    if not events:
        events.append(SagaAborted(reason))
    return events


def _resume(definition: SagaDefinition, state: SagaState, forward: bool) -> list[Any]:
    if state.phase in ("new", "done"):
        return []
    if state.phase == "aborting":
        return _abort_tasks(definition, state.compensate, state.reason or INTERRUPTED)
    if state.committed or forward:
        # Roll forward: send every step of the current stage again (idempotent
        # participants answer a repeat with the first result). Attempts made
        # before the restart are unknown: those steps stay "may have had an effect".
        return [AttemptStarted(DO, s.name, 1) for s in definition.stages[state.stage]]
    # No commit decision was recorded: presumed abort.
    return _abort(definition, state, INTERRUPTED, None)


# --- what a saga is doing, for people -----------------------------------------

SagaViewPhase = Literal["new", "forward", "committed", "compensating", "completed", "aborted"]


@dataclass(frozen=True, slots=True)
class StepView:
    """One step still pending: its kind ("do" or "undo"), the attempt number, the last error."""

    step: str
    kind: StepKind
    attempt: int
    status: TaskStatus
    last_error: str | None
    stuck: bool


@dataclass(frozen=True, slots=True)
class SagaView:
    """A saga as a person would ask about it.

    `phase`: "forward" (running its stages, no decision yet), "committed"
    (the commit decision is recorded: driven to the end), "compensating"
    (rolling back), "completed" or "aborted" (finished); "new" before it
    began. `pending` lists the steps not finished yet. `stuck` is true when a
    step that must finish has used up `maximum_attempts` and keeps retrying.
    """

    saga_id: str
    phase: SagaViewPhase
    pending: tuple[StepView, ...]
    reason: str | None

    @property
    def stuck(self) -> bool:
        return any(step.stuck for step in self.pending)

    def summary(self) -> str:
        """One line: where the saga is and what it waits for."""
        head = {
            "new": "not begun",
            "forward": "running, no decision yet",
            "committed": "commit decided",
            "compensating": f"rollback decided ({self.reason})" if self.reason else "rollback decided",
            "completed": "completed",
            "aborted": f"rolled back ({self.reason})" if self.reason else "rolled back",
        }[self.phase]
        parts = []
        for step in self.pending:
            label = f"{step.step} (compensation)" if step.kind == UNDO else step.step
            text = f"{label} pending, attempt {step.attempt}"
            if step.last_error:
                text += f", last error: {step.last_error}"
            if step.stuck:
                text += ", stuck"
            parts.append(text)
        return "; ".join([head, *parts])


def view(state: SagaState) -> SagaView:
    """The `SagaView` of a state (pure)."""
    phase: SagaViewPhase
    if state.phase == "done":
        phase = "completed" if state.outcome == "completed" else "aborted"
    elif state.phase == "aborting":
        phase = "compensating"
    elif state.phase == "forward":
        phase = "committed" if state.committed else "forward"
    else:
        phase = "new"
    pending = tuple(
        StepView(step, kind, run.attempt, run.status, run.last_error, run.stuck)
        for (kind, step), run in sorted(state.tasks.items())
        if run.status in ("running", "backoff")
    )
    return SagaView(state.saga_id or "", phase, pending, state.reason)
