"""Saga actors hosted on few threads: each saga its own state, stream, mailbox and supervision."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from saga_actors.actors import FaultPlan, OrderSystem
from saga_actors.persistence.journal import InMemoryJournal
from saga_actors.sagas import Metrics, Reply, Request, RetryPolicy, SagaDefinition, Step
from saga_actors.sagas.host import KillSaga, SagaFinished, SagaHost, SagaHosts, SagaSpec, shard_of
from saga_actors.supervision import Backoff, Escalated, Intensity, start_monitored
from saga_actors.supervision.timer import Timer
from tests.conftest import make_request

TRIP = SagaDefinition(
    name="trip",
    stages=(
        (Step("book_flight", "airline", action=lambda c: ("book", c.saga_id), compensation=lambda c: "x"),),
        (Step("ticket", "airline", action=lambda c: ("ticket", c.saga_id)),),
    ),
    pivot=1,
)


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.002)


class Gate(pykka.ThreadingActor):
    """A participant that holds every request until told to answer them all (success)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []
        self.seen: list[Any] = []
        self.open = False

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Request):
            self.seen.append(message.command)
            if self.open:
                message.reply_to.tell(Reply.success(message.correlation))
            else:
                self.held.append(message)
        elif message == "open":
            self.open = True
            for request in self.held:
                request.reply_to.tell(Reply.success(request.correlation))
            self.held.clear()
        elif message == "held":
            return len(self.held)
        elif message == "seen":
            return list(self.seen)
        return None


class Harness:
    def __init__(
        self,
        *,
        shards: int = 1,
        intensity: Intensity | None = None,
        backoff: Backoff | None = None,
        max_outstanding: int = 1000,
        attempt_timeout: float = 30.0,
        participant: Any = None,
    ):
        self.journal = InMemoryJournal()
        self.timer = Timer("test-timer")
        self.timer.start()
        self.gate = Gate.start()
        self.participant = participant(self.timer) if participant is not None else self.gate
        self.max_outstanding, self.attempt_timeout = max_outstanding, attempt_timeout
        self.metrics = Metrics()
        self.hosts = SagaHosts("test-host", shards)
        self.finished: list[SagaFinished] = []
        self.restarted: list[str] = []
        self.exits: list[BaseException | None] = []
        self.events: list[str] = []
        self.intensity, self.backoff = intensity, backoff
        self.resume: list[SagaSpec] = []
        self.refs = [self.start_host(shard) for shard in range(shards)]

    def start_host(self, shard: int) -> pykka.ActorRef[Any]:
        address = self.hosts.addresses[shard]
        return start_monitored(
            lambda: SagaHost.start(
                definition=TRIP,
                journal=self.journal,
                participants={"airline": self.participant},
                timer=self.timer,
                policy=RetryPolicy(attempt_timeout=self.attempt_timeout),
                metrics=self.metrics,
                on_finish=self.on_finish,
                address=address,
                shard=shard,
                shards=len(self.hosts),
                resume=lambda: list(self.resume),
                on_restart=self.on_restart,
                intensity=self.intensity,
                backoff=self.backoff,
                seed=1,
                max_outstanding=self.max_outstanding,
            ),
            lambda urn, error: self.exits.append(error),
            address,
        )

    def on_finish(self, finished: SagaFinished) -> None:
        self.events.append(f"finished {finished.saga_id}")
        self.finished.append(finished)

    def on_restart(self, saga_id: str) -> None:
        self.events.append(f"restarted {saga_id}")
        self.restarted.append(saga_id)

    def outcomes(self) -> dict[str, bool]:
        return {f.saga_id: f.committed for f in self.finished}

    def stop(self) -> None:
        for ref in self.refs:
            ref.stop()
        self.gate.stop()
        if self.participant is not self.gate:
            self.participant.stop()
        self.timer.stop()


@pytest.fixture
def harness() -> Iterator[Harness]:
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        made.append(Harness(**kwargs))
        return made[-1]

    yield make  # type: ignore[misc]
    for h in made:
        h.stop()


def test_many_sagas_share_one_thread_each_with_its_own_state_and_stream(harness):
    h = harness()
    threads_before = threading.active_count()
    for i in range(200):
        h.hosts.start(SagaSpec(f"t{i}", data={"n": i}, fresh=True))
    wait_for(lambda: h.gate.ask("held") == 200, what="200 sagas in flight")
    assert threading.active_count() <= threads_before, "a saga must not cost a thread"
    view = h.hosts.view("t7", timeout=2)
    assert view is not None and view.phase == "forward"
    h.gate.tell("open")
    wait_for(lambda: len(h.finished) == 200, what="every saga finished")
    assert set(h.outcomes().values()) == {True}
    assert len(h.journal.persistence_ids("saga:trip:")) == 200
    assert h.hosts.view("t7", timeout=2) is None  # finished sagas leave the host


def test_a_crashed_saga_restarts_alone_and_gets_what_was_sent_to_it_meanwhile(harness):
    # A long backoff keeps the crashed saga between incarnations while the others carry on.
    h = harness(backoff=Backoff(min_backoff=0.3, max_backoff=0.3, random_factor=0.0))
    for name in ("victim", "bystander"):
        h.hosts.start(SagaSpec(name, data={}, fresh=True))
    wait_for(lambda: h.gate.ask("held") == 2, what="both sagas waiting for their first step")
    h.hosts.kill("victim", "drill")
    h.gate.tell("open")  # the victim's reply arrives while it is down: its mailbox keeps it
    wait_for(lambda: "finished bystander" in h.events, what="the bystander to finish")
    assert "restarted victim" not in h.events[: h.events.index("finished bystander")]
    wait_for(lambda: "finished victim" in h.events, what="the victim to finish after its restart")
    assert h.restarted == ["victim"]  # the bystander was never restarted
    assert h.outcomes() == {"victim": True, "bystander": True}
    assert h.exits == []  # the host itself never failed
    # The restarted victim resumed from its journal: it began exactly once.
    started = [s.event for s in h.journal.replay("saga:trip:victim")]
    assert sum(type(e).__name__ == "SagaStarted" for e in started) == 1


def test_a_saga_that_always_crashes_makes_its_host_fail_past_the_intensity(harness):
    def broken(context: Any) -> Any:
        raise RuntimeError("bug in the step")

    h = harness(
        intensity=Intensity(max_restarts=3, within_seconds=10.0),
        backoff=Backoff(min_backoff=0.001, max_backoff=0.001, random_factor=0.0),
    )
    h.hosts.start(SagaSpec("ok", data={}, fresh=True))
    wait_for(lambda: h.gate.ask("held") == 1, what="a healthy saga in flight")
    # Crash the healthy saga over and over: past 3 restarts the host escalates.
    for _ in range(5):
        h.hosts.kill("ok", "again")
        wait_for(lambda: bool(h.exits) or h.hosts.view("ok", timeout=2) is not None, what="restart")
        if h.exits:
            break
    wait_for(lambda: bool(h.exits), what="the host to fail")
    assert isinstance(h.exits[0], Escalated)
    assert "more than 3 saga restarts" in str(h.exits[0])


def test_a_started_host_resumes_only_the_sagas_of_its_shard(harness):
    h = harness(shards=2)
    ids = [f"r{i}" for i in range(20)]
    for saga_id in ids:
        h.hosts.start(SagaSpec(saga_id, data={}, fresh=True))
    wait_for(lambda: h.gate.ask("held") == 20, what="20 sagas in flight")
    # Host 0 dies; its replacement resumes, from the journal, the sagas it is given of its shard.
    h.refs[0].stop()
    mine = [i for i in ids if shard_of(i, 2) == 0]
    assert 0 < len(mine) < 20
    h.resume = [SagaSpec(i, data={}, resume_forward=True) for i in ids]  # all of them: the host picks its own
    h.refs[0] = h.start_host(0)
    h.gate.tell("open")
    wait_for(lambda: len(h.finished) == 20, what="every saga finished")
    assert h.outcomes() == dict.fromkeys(ids, True)
    seen = h.gate.ask("seen")
    # Each resumed saga re-sent its first step; the others sent it once.
    for saga_id in ids:
        assert seen.count(("book", saga_id)) == (2 if saga_id in mine else 1)


def test_a_message_for_a_saga_that_is_not_running_is_dropped_without_harm(harness):
    h = harness()
    h.hosts.ref("nobody").tell(Reply.success(None))
    h.refs[0].tell(KillSaga("nobody"))
    h.hosts.start(SagaSpec("somebody", data={}, fresh=True))
    h.gate.tell("open")
    wait_for(lambda: len(h.finished) == 1, what="the saga to finish")
    assert h.exits == []


def test_a_participant_has_at_most_max_outstanding_requests_from_a_host(harness):
    h = harness(max_outstanding=3)
    for i in range(10):
        h.hosts.start(SagaSpec(f"w{i}", data={}, fresh=True))
    h.hosts.view("w0", timeout=2)  # the host has taken every start (and sent what it may)
    assert h.gate.ask("held") == 3  # the other 7 wait in the host, not at the participant
    h.gate.tell("open")
    wait_for(lambda: len(h.finished) == 10, what="every saga finished")
    assert h.outcomes() == {f"w{i}": True for i in range(10)}
    seen = h.gate.ask("seen")
    assert sorted(c for c in seen if c[0] == "book") == sorted(("book", f"w{i}") for i in range(10))


class SlowEcho(pykka.ThreadingActor):
    """A participant that serves one request at a time, 50 ms each (scheduled, never sleeping)."""

    def __init__(self, timer: Timer) -> None:
        super().__init__()
        self.timer = timer
        self.queue: list[Request] = []

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Request):
            self.queue.append(message)
            if len(self.queue) == 1:
                self.timer.schedule(0.05, self.actor_ref, "done")
        elif message == "done":
            request = self.queue.pop(0)
            request.reply_to.tell(Reply.success(request.correlation))
            if self.queue:
                self.timer.schedule(0.05, self.actor_ref, "done")


def test_time_waiting_for_a_slot_does_not_count_against_the_attempt_timeout(harness):
    # One request at a time, 50 ms each: the last of 12 sagas waits ~1 s in the host,
    # far beyond the 0.3 s attempt timeout, and still no attempt times out.
    h = harness(max_outstanding=1, attempt_timeout=0.3, participant=SlowEcho.start)
    for i in range(12):
        h.hosts.start(SagaSpec(f"q{i}", data={}, fresh=True))
    wait_for(lambda: len(h.finished) == 12, timeout=10, what="every saga finished")
    assert h.outcomes() == {f"q{i}": True for i in range(12)}
    assert h.metrics.snapshot().get("retries", 0) == 0


def test_orders_in_flight_cost_no_thread_each():
    slow = FaultPlan(min_latency=0.3, max_latency=0.3, seed=3)
    with OrderSystem(stock={1: 1000}, inventory_faults=slow, payment_faults=slow) as system:
        baseline = threading.active_count()
        futures = [system.submit(make_request(f"f{i}", [(1, 1)])) for i in range(500)]
        wait_for(lambda: system.metrics()["in_flight"] >= 400, what="orders in flight")
        assert threading.active_count() <= baseline + 2
        assert all(f.get(30) for f in futures)
        assert system.wait_idle(10)
        assert all(check.ok for check in system.check_consistency())
