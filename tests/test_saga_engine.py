"""The saga state machine, without threads: decide + evolve over plain data."""

from __future__ import annotations

import pytest

from saga_actors.sagas.definition import SagaDefinition, Step
from saga_actors.sagas.engine import (
    AbortDecided,
    AttemptRefused,
    AttemptStarted,
    AttemptTimedOut,
    CommitDecided,
    CompensationSkipped,
    Replied,
    Resume,
    RetryDue,
    RetryScheduled,
    SagaAborted,
    SagaCompleted,
    SagaStarted,
    SagaState,
    StageStarted,
    Start,
    StepStuck,
    TaskRejected,
    TaskSucceeded,
    decide,
    evolve,
    is_durable,
    view,
)
from saga_actors.sagas.policy import RetryPolicy

SAGA = SagaDefinition(
    name="trip",
    stages=(
        (
            Step("hotel", "h", action=lambda c: "book-hotel", compensation=lambda c: "cancel-hotel"),
            Step("flight", "f", action=lambda c: "book-flight", compensation=lambda c: "cancel-flight"),
        ),
        (Step("pay", "p", action=lambda c: "pay"), Step("notify", "n", action=lambda c: "notify")),
    ),
    pivot=1,
    on_abort=(Step("apologize", "n", action=lambda c: f"sorry: {c.reason}"),),
)
POLICY = RetryPolicy(initial_interval=0.1, backoff_coefficient=2.0, maximum_interval=1.0, maximum_attempts=3)


class Saga:
    """A saga under test: feeds commands through decide and folds events."""

    def __init__(self, policy: RetryPolicy = POLICY) -> None:
        self.state = SagaState()
        self.policy = policy
        self.journal: list[object] = []

    def send(self, command: object) -> list[object]:
        events = decide(SAGA, self.state, command, self.policy, lambda: 0.5)
        for event in events:
            if is_durable(event):
                self.journal.append(event)
            self.state = evolve(SAGA, self.state, event)
        return events

    def ok(self, step: str, attempt: int = 1, kind: str = "do") -> list[object]:
        return self.send(Replied(kind, step, attempt, True))

    def fail(
        self, step: str, attempt: int = 1, *, transient: bool, kind: str = "do", reason: str = "nope"
    ) -> list[object]:
        return self.send(Replied(kind, step, attempt, False, reason, transient))


def retry_of(events: list[object]) -> RetryScheduled:
    (retry,) = [e for e in events if isinstance(e, RetryScheduled)]
    return retry


def started(events: list[object]) -> set[tuple[str, str, int]]:
    return {(e.kind, e.step, e.attempt) for e in events if isinstance(e, AttemptStarted)}


def recovered(journal: list[object]) -> SagaState:
    state = SagaState()
    for event in journal:
        state = evolve(SAGA, state, event)
    return state


def test_first_stage_steps_start_together():
    saga = Saga()
    events = saga.send(Start("t1", {"who": "ann"}))
    assert events[:2] == [SagaStarted("t1", {"who": "ann"}), StageStarted(0)]
    assert started(events) == {("do", "hotel", 1), ("do", "flight", 1)}


def test_commit_decision_after_first_stage_then_second_stage_in_parallel():
    saga = Saga()
    saga.send(Start("t1", None))
    assert saga.ok("hotel") == [TaskSucceeded("do", "hotel")]  # waits for flight
    events = saga.ok("flight")
    assert CommitDecided() in events and StageStarted(1) in events
    assert started(events) == {("do", "pay", 1), ("do", "notify", 1)}
    saga.ok("pay")
    assert saga.ok("notify")[-1] == SagaCompleted()
    assert saga.state.outcome == "completed"


def test_rejection_compensates_what_may_have_happened_and_runs_on_abort():
    saga = Saga()
    saga.send(Start("t1", None))
    events = saga.fail("hotel", transient=False, reason="full")
    assert events[0] == TaskRejected("hotel", "full")
    assert events[1] == AbortDecided("full", "hotel", ("flight",))
    # flight is still in flight: it may take effect, so it is compensated now
    assert started(events) == {("undo", "flight", 1), ("do", "apologize", 1)}
    assert saga.ok("flight") == []  # the late answer is ignored
    saga.ok("flight", kind="undo")
    assert saga.ok("apologize")[-1] == SagaAborted("full")
    assert saga.state.outcome == "aborted" and saga.state.reason == "full"


def test_rejection_after_success_compensates_the_succeeded_step():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("hotel")
    events = saga.fail("flight", transient=False, reason="no seats")
    assert AbortDecided("no seats", "flight", ("hotel",)) in events
    assert ("undo", "hotel", 1) in started(events)
    assert ("undo", "flight", 1) not in started(events)


def test_transient_failure_is_retried_with_backoff():
    saga = Saga()
    saga.send(Start("t1", None))
    events = saga.fail("hotel", transient=True)
    assert events == [
        AttemptRefused("do", "hotel", 1),  # "unavailable": refused before any effect
        RetryScheduled("do", "hotel", 2, pytest.approx(0.075), "nope"),
    ]
    assert saga.send(RetryDue("do", "hotel", 2)) == [AttemptStarted("do", "hotel", 2)]
    events = saga.fail("hotel", 2, transient=True)
    assert retry_of(events).delay == pytest.approx(0.15)  # doubled, jitter 0.5 -> 3/4 of it


def test_timeout_counts_as_transient_and_stale_timeouts_are_ignored():
    saga = Saga()
    saga.send(Start("t1", None))
    assert isinstance(saga.send(AttemptTimedOut("do", "hotel", 1))[0], RetryScheduled)
    assert saga.send(AttemptTimedOut("do", "hotel", 1)) == []
    # A late "unavailable" for the timed-out attempt: no retry, but now we know it had no effect.
    assert saga.fail("hotel", 1, transient=True) == [AttemptRefused("do", "hotel", 1)]
    assert saga.fail("hotel", 1, transient=True) == []


def test_retries_exhausted_rolls_back_including_the_exhausted_step():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("flight")
    for attempt in (1, 2):
        saga.fail("hotel", attempt, transient=True)
        saga.send(RetryDue("do", "hotel", attempt + 1))
    events = saga.send(AttemptTimedOut("do", "hotel", 3))
    abort = next(e for e in events if isinstance(e, AbortDecided))
    assert abort.reason == "retries_exhausted"
    assert set(abort.compensate) == {"hotel", "flight"}  # a timed-out booking may exist


def test_after_the_commit_decision_nothing_is_abandoned():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("hotel")
    saga.ok("flight")
    stuck = []
    for attempt in range(1, 20):  # far beyond maximum_attempts
        events = saga.fail("pay", attempt, transient=False, reason="oops")
        assert retry_of(events).delay <= POLICY.maximum_interval
        if attempt >= POLICY.maximum_attempts:  # stuck: retried at the longest interval
            assert retry_of(events).delay >= POLICY.maximum_interval / 2
        stuck += [e for e in events if isinstance(e, StepStuck)]
        saga.send(RetryDue("do", "pay", attempt + 1))
    assert stuck == [StepStuck("do", "pay", 3, "oops")]  # said once, not on every attempt
    saga.ok("notify")
    assert saga.ok("pay", 20)[-1] == SagaCompleted()


def test_compensations_are_retried_until_they_succeed():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("hotel")
    saga.fail("flight", transient=False)
    for attempt in range(1, 12):
        assert retry_of(saga.fail("hotel", attempt, kind="undo", transient=True)).attempt == attempt + 1
        saga.send(RetryDue("undo", "hotel", attempt + 1))
    saga.ok("apologize")
    assert saga.ok("hotel", 12, kind="undo")[-1] == SagaAborted("nope")


def test_only_decisions_are_journaled():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.fail("hotel", transient=True)
    saga.ok("flight")
    assert all(type(e) in (SagaStarted, StageStarted) for e in saga.journal)


def test_recovery_without_decision_presumes_abort_and_compensates_every_started_step():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("hotel")
    state = recovered(saga.journal)
    events = decide(SAGA, state, Resume(), POLICY, lambda: 0.5)
    assert events[0] == AbortDecided("interrupted", None, ("hotel", "flight"))
    assert started(events) == {("undo", "hotel", 1), ("undo", "flight", 1), ("do", "apologize", 1)}


def test_recovery_after_commit_decision_rolls_forward():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("hotel")
    saga.ok("flight")
    saga.ok("pay")
    state = recovered(saga.journal)
    assert state.committed
    events = decide(SAGA, state, Resume(), POLICY, lambda: 0.5)
    assert started(events) == {("do", "pay", 1), ("do", "notify", 1)}


def test_recovery_while_compensating_resends_the_compensations():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("hotel")
    saga.fail("flight", transient=False)
    state = recovered(saga.journal)
    events = decide(SAGA, state, Resume(), POLICY, lambda: 0.5)
    assert started(events) == {("undo", "hotel", 1), ("do", "apologize", 1)}


def test_finished_saga_does_nothing_on_resume_or_late_messages():
    saga = Saga()
    saga.send(Start("t1", None))
    for step in ("hotel", "flight", "pay", "notify"):
        saga.ok(step)
    assert decide(SAGA, recovered(saga.journal), Resume(), POLICY, lambda: 0.5) == []
    assert saga.ok("pay") == []
    assert saga.send(Start("t1", None)) == []


def test_definition_is_validated():
    step = Step("a", "x", action=lambda c: None, compensation=lambda c: None)
    with pytest.raises(ValueError, match="pivot"):
        SagaDefinition("bad", ((step,),), pivot=2)
    with pytest.raises(ValueError, match="unique"):
        SagaDefinition("bad", ((step, step),), pivot=1)
    with pytest.raises(ValueError, match="after the pivot"):
        SagaDefinition("bad", ((Step("b", "x", lambda c: None),), (step,)), pivot=1)


def test_backoff_is_exponential_capped_and_jittered():
    policy = RetryPolicy(initial_interval=0.05, backoff_coefficient=2.0, maximum_interval=2.0)
    assert policy.backoff(1, 1.0) == pytest.approx(0.05)
    assert policy.backoff(3, 1.0) == pytest.approx(0.2)
    assert policy.backoff(100, 1.0) == pytest.approx(2.0)
    assert policy.backoff(10_000, 0.0) == pytest.approx(1.0)
    assert policy.backoff(3, 0.0) == pytest.approx(0.1)


def test_retry_policy_names_every_bad_parameter():
    with pytest.raises(ValueError) as raised:
        RetryPolicy(initial_interval=0, backoff_coefficient=0.5, maximum_attempts=0, attempt_timeout=-1)
    message = str(raised.value)
    for name in ("initial_interval", "backoff_coefficient", "maximum_attempts", "attempt_timeout"):
        assert name in message


# --- which steps a rollback compensates: exactly those that may have had an effect ---


def test_a_step_only_ever_refused_is_not_compensated():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("flight")
    for attempt in (1, 2):
        saga.fail("hotel", attempt, transient=True, reason="unavailable")
        saga.send(RetryDue("do", "hotel", attempt + 1))
    events = saga.fail("hotel", 3, transient=True, reason="unavailable")
    abort = next(e for e in events if isinstance(e, AbortDecided))
    assert abort.reason == "retries_exhausted"
    assert abort.compensate == ("flight",)  # hotel was never booked: nothing to cancel
    assert ("undo", "hotel", 1) not in started(events)


def test_an_undeliverable_request_had_no_effect():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.fail("flight", transient=True, reason="unreachable")  # the participant was down
    events = saga.fail("hotel", transient=False, reason="full")
    assert next(e for e in events if isinstance(e, AbortDecided)).compensate == ()


def test_a_timed_out_attempt_may_have_had_an_effect_even_if_a_later_one_is_refused():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("flight")
    saga.send(AttemptTimedOut("do", "hotel", 1))  # attempt 1 may still arrive
    saga.send(RetryDue("do", "hotel", 2))
    saga.fail("hotel", 2, transient=True)
    saga.send(RetryDue("do", "hotel", 3))
    events = saga.fail("hotel", 3, transient=True)
    assert set(next(e for e in events if isinstance(e, AbortDecided)).compensate) == {"hotel", "flight"}


def test_a_step_whose_request_is_still_on_the_wire_is_compensated():
    saga = Saga()
    saga.send(Start("t1", None))
    events = saga.fail("hotel", transient=False, reason="full")
    assert next(e for e in events if isinstance(e, AbortDecided)).compensate == ("flight",)


def test_a_late_success_of_an_earlier_attempt_is_the_steps_success():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.send(AttemptTimedOut("do", "hotel", 1))  # slow wire: attempt 1 times out
    assert saga.ok("hotel", 1) == [TaskSucceeded("do", "hotel")]  # ... and then answers
    assert saga.send(RetryDue("do", "hotel", 2)) == []  # the scheduled retry is not sent
    events = saga.ok("flight")
    assert CommitDecided() in events


def test_a_late_success_while_a_later_attempt_runs_is_the_steps_success():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.send(AttemptTimedOut("do", "hotel", 1))
    saga.send(RetryDue("do", "hotel", 2))
    assert saga.ok("hotel", 1) == [TaskSucceeded("do", "hotel")]
    assert saga.ok("hotel", 2) == []  # the step is over
    assert saga.send(AttemptTimedOut("do", "hotel", 2)) == []


def test_a_success_for_an_attempt_never_sent_is_ignored():
    saga = Saga()
    saga.send(Start("t1", None))
    assert saga.ok("hotel", 5) == []


def test_the_view_says_what_a_stuck_saga_waits_for():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("hotel")
    saga.fail("flight", transient=False, reason="no seats")
    for attempt in range(1, 5):
        saga.fail("hotel", attempt, kind="undo", transient=True, reason="unavailable")
        saga.send(RetryDue("undo", "hotel", attempt + 1))
    shown = view(saga.state)
    assert shown.phase == "compensating" and shown.stuck
    assert [(p.step, p.kind, p.attempt, p.last_error) for p in shown.pending] == [
        ("apologize", "do", 1, None),
        ("hotel", "undo", 5, "unavailable"),
    ]
    assert shown.summary() == (
        "rollback decided (no seats); apologize pending, attempt 1; "
        "hotel (compensation) pending, attempt 5, last error: unavailable, stuck"
    )
    saga.ok("apologize")
    saga.ok("hotel", 5, kind="undo")
    assert view(saga.state).phase == "aborted" and not view(saga.state).pending


def test_view_phases():
    saga = Saga()
    assert view(saga.state).phase == "new"
    saga.send(Start("t1", None))
    assert view(saga.state).phase == "forward"
    saga.ok("hotel")
    saga.ok("flight")
    assert view(saga.state).phase == "committed"
    saga.ok("pay")
    saga.ok("notify")
    assert view(saga.state).phase == "completed"


def test_a_late_rejection_of_an_earlier_attempt_is_final():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.send(AttemptTimedOut("do", "hotel", 1))  # slow wire
    saga.send(RetryDue("do", "hotel", 2))
    events = saga.fail("hotel", 1, transient=False, reason="full")  # attempt 1's answer, late
    assert events[0] == TaskRejected("hotel", "full")
    assert next(e for e in events if isinstance(e, AbortDecided)).reason == "full"


def test_a_late_rejection_after_the_commit_decision_is_not_a_reason_to_retry_twice():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("hotel")
    saga.ok("flight")
    saga.send(AttemptTimedOut("do", "pay", 1))
    saga.send(RetryDue("do", "pay", 2))
    assert saga.fail("pay", 1, transient=False, reason="oops") == []  # attempt 2 is running


def test_a_compensation_is_dropped_when_late_answers_show_its_action_had_no_effect():
    saga = Saga()
    saga.send(Start("t1", None))
    events = saga.fail("hotel", transient=False, reason="full")  # flight's attempt 1 still on the wire
    assert next(e for e in events if isinstance(e, AbortDecided)).compensate == ("flight",)
    saga.ok("apologize")
    events = saga.fail("flight", 1, transient=True, reason="unavailable")  # ... refused after all
    assert events == [
        AttemptRefused("do", "flight", 1),
        CompensationSkipped("flight"),
        SagaAborted("full"),
    ]


def test_a_compensation_is_kept_while_another_attempt_may_have_had_an_effect():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.send(AttemptTimedOut("do", "flight", 1))
    saga.send(RetryDue("do", "flight", 2))
    saga.fail("hotel", transient=False, reason="full")
    assert saga.fail("flight", 2, transient=True) == [AttemptRefused("do", "flight", 2)]  # 1 may still land
    assert saga.fail("flight", 1, transient=False, reason="no seats")[-1] == CompensationSkipped("flight")


def test_a_restarted_saga_may_carry_on_before_the_decision_and_stays_conservative():
    saga = Saga()
    saga.send(Start("t1", None))
    saga.ok("hotel")
    state = recovered(saga.journal)  # the actor crashed; the process (and the card) are still here
    events = decide(SAGA, state, Resume(forward=True), POLICY, lambda: 0.5)
    assert started(events) == {("do", "hotel", 1), ("do", "flight", 1)}
    for event in events:
        state = evolve(SAGA, state, event)
    # hotel's resent attempt is refused; the attempt before the crash may still have booked it.
    events = decide(SAGA, state, Replied("do", "flight", 1, False, "full", False), POLICY, lambda: 0.5)
    assert next(e for e in events if isinstance(e, AbortDecided)).compensate == ("hotel",)
