"""The public saga runtime: its arguments, its lifecycle, and what every caller is told."""

from __future__ import annotations

import pytest

from saga_actors import Participant, SagaConflict, SagaDefinition, SagaRuntime, Step, SystemNotRunning
from saga_actors.examples.trip import TRIP_SAGA, TripRequest, trip_runtime
from saga_actors.sagas.runtime import SagaOutcome
from saga_actors.sagas.simulation import FaultPlan

TRIP = TripRequest("Ada", "LH123", "Adlon", "compact")


def test_bad_arguments_are_refused_naming_each_problem():
    two_steps = SagaDefinition(
        "x", ((Step("a", "alpha", action=lambda c: c), Step("b", "beta", action=lambda c: c)),), pivot=1
    )
    alpha = Participant("alpha", lambda c: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError) as error:
        SagaRuntime(
            two_steps,
            participants=[alpha],
            hosts=0,
            retry="fast",
            retention=-1,
            snapshot_every=0,  # type: ignore[arg-type]
        )
    message = str(error.value)
    assert "retention must be" in message and "snapshot_every must be" in message
    assert "not registered: ['beta']" in message
    assert "hosts must be" in message and "retry must be a RetryPolicy" in message
    with pytest.raises(ValueError, match="unique"):
        SagaRuntime(two_steps, participants=[alpha, alpha])
    with pytest.raises(ValueError, match="reserved"):
        SagaRuntime(two_steps, participants=[alpha, Participant("timer", alpha.start)])
    with pytest.raises(ValueError, match="definition must be a SagaDefinition"):
        SagaRuntime("trip", participants=[])  # type: ignore[arg-type]


def test_nothing_is_accepted_before_start_or_after_stop():
    runtime = trip_runtime()
    with pytest.raises(SystemNotRunning, match="call start"):
        runtime.submit("t", TRIP)
    with runtime:
        with pytest.raises(ValueError, match="saga_id"):
            runtime.submit("", TRIP)
        with pytest.raises(ValueError, match="saga_id"):
            runtime.submit(7, TRIP)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            runtime.run("t", TRIP, timeout=-1)
        with pytest.raises(ValueError, match="unknown actor"):
            runtime.kill("nobody")
        assert runtime.actor_names()[:4] == ["flights", "hotels", "cars", "timer"]
    assert not runtime.running and runtime.actor_names() == []
    with pytest.raises(SystemNotRunning):
        runtime.run("t", TRIP)


def test_stop_answers_every_waiting_caller_and_the_saga_resumes_at_the_next_start(tmp_path):
    path = str(tmp_path / "trips.db")
    slow = {"cars": FaultPlan(min_latency=30.0, max_latency=30.0, seed=1)}
    with trip_runtime(journal=path, faults=slow) as runtime:
        future = runtime.submit("t1", TRIP)
        with pytest.raises(TimeoutError, match=r"t1.*carries on"):
            future.get(timeout=0.2)
        view = runtime.saga("t1")
        assert view is not None and view.phase == "forward"
        assert "saga:t1" in runtime.actor_names()
    with pytest.raises(SystemNotRunning):
        future.get(timeout=5)
    with trip_runtime(journal=path) as runtime:  # the next start, on a perfect wire
        report = runtime.recovery()
        assert (report.sagas_resumed, report.rolled_back) == (1, 1)  # no commit decision: presumed abort
        assert runtime.wait_idle(10)
        outcome = runtime.outcome("t1")
        assert outcome is not None and not outcome.committed
        assert runtime.run("t1", TRIP, timeout=5) == outcome  # the same id: its first outcome


def test_an_outcome_is_a_plain_value_and_conflicts_name_the_id():
    with trip_runtime() as runtime:
        outcome = runtime.run("t2", TRIP, timeout=10)
        assert outcome == SagaOutcome("t2", True, None)
        with pytest.raises(SagaConflict) as conflict:
            runtime.run("t2", TripRequest("Bob", "LH123", "Adlon", "compact"), timeout=10)
        assert conflict.value.saga_id == "t2"
        view = runtime.saga("t2")
        assert TRIP_SAGA.name == "trip" and view is not None and view.phase == "completed"
