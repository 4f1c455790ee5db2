"""The public saga runtime: its arguments, its lifecycle, and what every caller is told."""

from __future__ import annotations

import pytest

from saga_actors import (
    Participant,
    SagaConflict,
    SagaContext,
    SagaDefinition,
    SagaRuntime,
    Step,
    SystemNotRunning,
)
from saga_actors.examples.trip import TRIP_SAGA, TripRequest, trip_runtime
from saga_actors.persistence import InMemoryJournal
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


# --- a user's mistakes fail the one saga or request they concern, at once and clearly ---

import dataclasses  # noqa: E402
import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from saga_actors import EventCodec, ParticipantActor  # noqa: E402
from saga_actors.persistence import SerializationError  # noqa: E402
from saga_actors.sagas.participant import Answer  # noqa: E402
from saga_actors.sagas.retention import ExpireRetention  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Move:
    account: str
    amount: int


@dataclasses.dataclass(frozen=True)
class Moved:
    transfer: str
    amount: int


@dataclasses.dataclass(frozen=True)
class Undone:
    transfer: str


@dataclasses.dataclass
class Ledger:  # no copy(): snapshots deep-copy it
    balance: int = 100
    moves: dict[str, int] = dataclasses.field(default_factory=dict)


class Bank(ParticipantActor[Any]):
    PERSISTENCE_ID = "bank"
    strict = False  # True: decide refuses ExpireRetention (a user who forgot it)

    def initial_state(self) -> Ledger:
        return Ledger()

    def decide(self, command: Any, state: Ledger) -> list[Any]:
        if isinstance(command, ExpireRetention):
            if self.strict:
                raise TypeError("unknown command")
            return []
        if isinstance(command, tuple) and command[0] == "undo":
            return [Undone(command[1])] if command[1] in state.moves else []
        transfer, amount = command
        return [] if transfer in state.moves else [Moved(transfer, amount)]

    def apply_event(self, state: Ledger, event: Any) -> Ledger:
        if isinstance(event, Moved):
            state.moves[event.transfer] = event.amount
            state.balance -= event.amount
        elif isinstance(event, Undone):
            state.balance += state.moves.pop(event.transfer)
        return state

    def answer(self, command: Any, state: Ledger) -> Answer:
        return True, None

    def on_other_message(self, message: Any) -> Any:
        return self.state.balance if message == "balance" else super().on_other_message(message)


class StrictBank(Bank):
    PERSISTENCE_ID = "strict-bank"
    strict = True


def bank_runtime(journal: Any = None, codec: EventCodec | None = None, **options: Any) -> SagaRuntime:
    saga = SagaDefinition(
        "transfer",
        (
            (
                Step(
                    "debit",
                    "bank",
                    action=lambda c: (c.saga_id, c.data.amount),
                    compensation=lambda c: ("undo", c.saga_id),
                ),
                Step(
                    "debit_strict",
                    "strict",
                    action=lambda c: (c.saga_id, 1),
                    compensation=lambda c: ("undo", c.saga_id),
                ),
            ),
        ),
        pivot=1,
    )
    return SagaRuntime(
        saga,
        participants=[
            Participant("bank", lambda c: Bank.start_recovered(c.journal, c.faults, **c.options)),
            Participant("strict", lambda c: StrictBank.start_recovered(c.journal, c.faults, **c.options)),
        ],
        journal=journal,
        codec=codec,
        **options,
    )


def test_data_the_journal_cannot_store_is_refused_by_submit_and_nothing_starts(tmp_path):
    with bank_runtime(journal=str(tmp_path / "j.db"), codec=EventCodec()) as runtime:
        with pytest.raises(SerializationError, match="Move is not registered"):
            runtime.submit("t1", Move("alice", 5))
        assert runtime.in_flight() == 0 and runtime.wait_idle(1)
        assert runtime.journal.persistence_ids("saga:") == []


def test_an_event_the_journal_cannot_store_refuses_that_request_only(tmp_path):
    codec = EventCodec()
    codec.register(Move)  # the participants' events are not registered
    with bank_runtime(journal=str(tmp_path / "j.db"), codec=codec) as runtime:
        outcome = runtime.run("t1", Move("alice", 5), timeout=10)
        assert not outcome.committed and outcome.reason == "internal_error: SerializationError"
        assert runtime.metrics()["restarts"] == 0  # refused, not crashed
        assert runtime.ask("bank", "balance") == 100


def test_a_step_whose_command_cannot_be_built_rolls_the_saga_back_at_once():
    with bank_runtime() as runtime:
        started = time.monotonic()
        outcome = runtime.run("t1", {"amount": 5}, timeout=10)  # a dict: c.data.amount fails
        assert not outcome.committed and outcome.reason == "internal_error: AttributeError"
        assert time.monotonic() - started < 5
        assert runtime.metrics()["restarts"] == 0 and runtime.in_flight() == 0
        assert runtime.ask("strict", "balance") == 100  # its debit was compensated


def test_a_state_without_copy_is_snapshotted_and_a_decide_without_expiry_keeps_serving(caplog):
    caplog.set_level(logging.ERROR, logger="saga_actors")
    with bank_runtime(snapshot_every=2, retention=1) as runtime:  # expiry every second
        for n in range(6):
            assert runtime.run(f"t{n}", Move("alice", 1), timeout=10).committed
        deadline = time.monotonic() + 5
        while not any("ExpireRetention" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the strict participant's expiry never ran"
            threading.Event().wait(0.05)
        assert runtime.run("t9", Move("alice", 1), timeout=10).committed
        assert runtime.metrics()["restarts"] == 0
        assert runtime.ask("bank", "balance") == 93
    assert sum("ExpireRetention" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_ask_names_the_participants_and_the_library_prints_nothing_unasked():
    with trip_runtime() as runtime, pytest.raises(ValueError, match="flights, hotels, cars"):
        runtime.ask("bogus", None)
    script = (
        "from saga_actors.examples.trip import trip_runtime\n"
        "with trip_runtime() as r:\n"
        "    r.kill('flights')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""


class PoisonedJournal(InMemoryJournal):
    """Every write to one saga's stream fails (a disk that refuses that row, say)."""

    def append_async(self, persistence_id, events, expected_sequence_nr, on_done):  # type: ignore[no-untyped-def]
        if persistence_id == "saga:trip:poison":
            on_done(None, OSError("this row cannot be written"))
            return
        super().append_async(persistence_id, events, expected_sequence_nr, on_done)


def test_a_saga_that_fails_every_time_it_restarts_is_suspended_and_the_others_go_on():
    from saga_actors.sagas.runtime import SagaFailed

    with trip_runtime(journal=PoisonedJournal()) as runtime:
        poisoned = runtime.submit("poison", TRIP)
        others = [runtime.submit(f"ok-{n}", TRIP) for n in range(5)]
        with pytest.raises(SagaFailed, match="OSError") as failed:
            poisoned.get(timeout=20)
        assert failed.value.saga_id == "poison"
        assert all(f.get(timeout=20).committed for f in others)
        assert runtime.wait_idle(20) and runtime.running
        metrics = runtime.metrics()
        assert metrics["sagas_suspended"] == 1 and metrics["in_flight"] == 0


def test_saga_ids_and_data_are_checked_before_anything_starts():
    with trip_runtime() as runtime:
        for bad in ("", "x" * 1001, "\ud800", None, 5):
            with pytest.raises(ValueError, match="saga_id"):
                runtime.submit(bad, TRIP)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="saga_id"):
                runtime.outcome(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must not be None"):
            runtime.submit("x", None)
        assert runtime.in_flight() == 0
        context = SagaContext("s", TRIP, ephemeral="4242424242424242")
        assert "4242" not in repr(context)


def test_a_participant_start_that_returns_no_actor_fails_start_clearly_and_leaves_nothing_running():
    one_step = SagaDefinition("x", ((Step("a", "alpha", action=lambda c: c.saga_id),),), pivot=1)
    runtime = SagaRuntime(one_step, participants=[Participant("alpha", lambda c: None)])  # type: ignore[arg-type,return-value]
    with pytest.raises(Exception, match=r"alpha.*must return a pykka.ActorRef"):
        runtime.start()
    assert not runtime.running
    with pytest.raises(ValueError, match="journal must be"):
        SagaRuntime(one_step, participants=[Participant("alpha", lambda c: None)], journal=object())  # type: ignore[arg-type]
