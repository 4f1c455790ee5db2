"""Cluster mode of the saga runtime, on the in-memory lease store: several nodes in one process.

Each saga id runs once cluster-wide; a caller on any node gets its outcome;
a node that stops renewing its lease is fenced off and its unfinished
sagas are taken over by another node (presumed abort before the commit
decision, roll forward after it). The same rules on PostgreSQL, with nodes
as real processes, are tested in test_cluster_processes.py.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from saga_actors import Participant, SagaDefinition, SagaRuntime, Step
from saga_actors.persistence.lease import Fence, InMemoryLeaseJournal, LeaseLost
from saga_actors.sagas.host import saga_persistence_id
from saga_actors.sagas.protocol import Reply, Request
from saga_actors.sagas.runtime import SagaConflict, SagaFailed, SagaOutcome, SystemNotRunning
from saga_actors.sagas.simulation import FaultPlan

LEASE = 0.6  # seconds: short, so that take-overs happen within a test


@dataclasses.dataclass(frozen=True)
class Booking:
    guest: str
    nights: int


@dataclasses.dataclass(frozen=True)
class Hold:
    saga_id: str
    nights: int


@dataclasses.dataclass(frozen=True)
class Release:
    saga_id: str


@dataclasses.dataclass(frozen=True)
class Confirm:
    saga_id: str


BOOKING = SagaDefinition(
    "booking",
    stages=(
        (
            Step(
                "hold",
                "hotel",
                action=lambda c: Hold(c.saga_id, c.data.nights),
                compensation=lambda c: Release(c.saga_id),
            ),
        ),
        (Step("confirm", "hotel", action=lambda c: Confirm(c.saga_id)),),
    ),
    pivot=1,
)


class Hotel:
    """The service every node calls (shared, like a real one): idempotent by saga id, and it
    counts every effect so that a test can see each happened once."""

    def __init__(self, refuse_over: int = 10) -> None:
        self.lock = threading.Lock()
        self.held: set[str] = set()
        self.released: set[str] = set()
        self.confirmed: set[str] = set()
        self.applied: Counter[tuple[str, str]] = Counter()  # (saga id, effect) -> times applied
        self.refuse_over = refuse_over

    def handle(self, command: Any) -> tuple[bool, str | None]:
        with self.lock:
            match command:
                case Hold(saga_id=saga_id, nights=nights):
                    if nights > self.refuse_over:
                        return False, "too many nights"
                    if saga_id not in self.held and saga_id not in self.released:
                        self.held.add(saga_id)
                        self.applied[(saga_id, "hold")] += 1
                case Release(saga_id=saga_id):
                    if saga_id not in self.released:
                        self.released.add(saga_id)
                        self.held.discard(saga_id)
                        self.applied[(saga_id, "release")] += 1
                case Confirm(saga_id=saga_id):
                    if saga_id not in self.confirmed:
                        self.confirmed.add(saga_id)
                        self.applied[(saga_id, "confirm")] += 1
            return True, None


class HotelLink(pykka.ThreadingActor):
    """One node's stateless participant: forwards each request to the shared hotel."""

    def __init__(self, hotel: Hotel) -> None:
        super().__init__()
        self.hotel = hotel

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Request):
            ok, reason = self.hotel.handle(message.command)
            if message.reply_to is not None:
                message.reply_to.tell(Reply(message.correlation, ok, reason))
        return None


def node(
    store: InMemoryLeaseJournal, node_id: str, hotel: Hotel, latency: float = 0.0, lease: float = LEASE
) -> SagaRuntime:
    faults = FaultPlan(min_latency=latency, max_latency=latency, seed=1) if latency else None
    return SagaRuntime(
        BOOKING,
        participants=[Participant("hotel", lambda c: HotelLink.start(hotel), faults)],
        journal=store,
        node_id=node_id,
        lease=lease,
        name=f"node-{node_id}",
    )


@pytest.fixture
def started() -> Iterator[Callable[[SagaRuntime], SagaRuntime]]:
    runtimes: list[SagaRuntime] = []

    def start(runtime: SagaRuntime) -> SagaRuntime:
        runtimes.append(runtime.start())
        return runtime

    yield start
    for runtime in runtimes:
        runtime.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        threading.Event().wait(0.02)
    return condition()


def test_cluster_arguments_are_checked_naming_each_problem():
    hotel = Hotel()
    with pytest.raises(ValueError) as error:
        SagaRuntime(
            BOOKING,
            participants=[Participant("hotel", lambda c: HotelLink.start(hotel))],
            journal="bookings.db",
            node_id=" n1",
            lease=0,
        )
    message = str(error.value)
    assert "node_id must be" in message and "lease must be" in message
    assert "node_id needs a journal shared by nodes" in message


def test_one_saga_per_id_cluster_wide_and_every_caller_gets_its_outcome(started):
    store, hotel = InMemoryLeaseJournal(), Hotel()
    nodes = [started(node(store, f"n{i}", hotel, latency=0.05)) for i in (1, 2, 3)]
    futures = []
    for i in range(30):
        booking = Booking(f"guest {i}", 12 if i % 5 == 0 else 2)
        for n in nodes:  # every node gets every booking, at once
            futures.append((f"b{i}", n.submit(f"b{i}", booking)))
    outcomes: dict[str, set[SagaOutcome]] = {}
    for saga_id, future in futures:
        outcomes.setdefault(saga_id, set()).add(future.get(timeout=20))
    assert all(len(seen) == 1 for seen in outcomes.values()), outcomes  # one outcome per id
    committed = {saga_id for saga_id, seen in outcomes.items() if next(iter(seen)).committed}
    assert committed == {f"b{i}" for i in range(30) if i % 5}
    assert hotel.confirmed == committed and hotel.held == committed
    assert max(hotel.applied.values()) == 1  # no effect twice
    # Each saga has one stream, started once, owned by the node that started it.
    for i in range(30):
        events = store.replay(saga_persistence_id(BOOKING, f"b{i}"))
        assert sum(type(e.event).__name__ == "SagaStarted" for e in events) == 1
        assert store.owner(saga_persistence_id(BOOKING, f"b{i}")) in {"n1", "n2", "n3"}
    assert sum(n.metrics()["sagas_awaited_elsewhere"] for n in nodes) > 0


def test_other_data_under_the_same_id_is_a_conflict_on_the_node_that_sees_it_second(started):
    store, hotel = InMemoryLeaseJournal(), Hotel()
    n1, n2 = started(node(store, "n1", hotel, latency=0.2)), started(node(store, "n2", hotel))
    first = n1.submit("b1", Booking("Ada", 2))
    with pytest.raises(SagaConflict):
        n2.run("b1", Booking("Bob", 2), timeout=10)
    assert first.get(timeout=10).committed
    assert n2.run("b1", Booking("Ada", 2), timeout=10) == SagaOutcome("b1", True, None)


def test_a_dead_nodes_sagas_are_taken_over_and_its_writes_refused(started):
    store, hotel = InMemoryLeaseJournal(), Hotel()
    n1 = started(node(store, "n1", hotel, latency=1.5))  # replies take 1.5 s: in flight when it dies
    n2 = started(node(store, "n2", hotel))
    waiting = [n1.submit(f"d{i}", Booking("Ada", 2)) for i in range(5)]
    assert wait_until(lambda: all(store.owner(saga_persistence_id(BOOKING, f"d{i}")) for i in range(5)))
    on_n2 = [n2.submit(f"d{i}", Booking("Ada", 2)) for i in range(5)]  # awaited elsewhere
    lease_at_death = next(lease for lease in store.leases() if lease.node_id == "n1")
    died = time.monotonic()
    n1._member.request_stop()  # type: ignore[union-attr]  # n1 stops renewing, as if frozen
    # n2 takes over within a lease and one renewal period, and finishes them: no commit
    # decision was journaled, so they roll back (presumed abort).
    outcomes = [f.get(timeout=10) for f in on_n2]
    taken_after = time.monotonic() - died
    assert all(not o.committed for o in outcomes)
    assert taken_after < LEASE + LEASE / 3 + 1.0
    assert n2.metrics()["sagas_taken_over"] == 5
    assert all(store.owner(saga_persistence_id(BOOKING, f"d{i}")) == "n2" for i in range(5))
    # n1 comes back: whatever it writes now under its old epoch is refused.
    stale = store.fenced(Fence("n1", lease_at_death.epoch))
    with pytest.raises(LeaseLost):
        stale.append(saga_persistence_id(BOOKING, "d0"), [object()], 99)
    assert wait_until(lambda: hotel.released == {f"d{i}" for i in range(5)}), (
        hotel.released,
        hotel.held,
        hotel.applied,
        [(e.event) for e in store.replay(saga_persistence_id(BOOKING, "d0"))],
    )
    assert not hotel.confirmed and max(hotel.applied.values()) == 1
    n1.stop()
    for future in waiting:  # its callers were told it stopped, or the outcome
        try:
            assert not future.get(timeout=5).committed
        except (SystemNotRunning, SagaFailed):
            pass


def test_a_node_that_lost_its_lease_stops_its_sagas_rejoins_and_its_callers_still_get_the_outcome(
    started,
):
    clock = FakeClock()
    store, hotel = InMemoryLeaseJournal(clock), Hotel()
    n1 = started(node(store, "n1", hotel, latency=0.3, lease=5.0))
    future = n1.submit("p1", Booking("Ada", 2))
    assert wait_until(lambda: store.owner(saga_persistence_id(BOOKING, "p1")) == "n1")
    clock.advance(6.0)  # n1's lease expired by the store's clock (a pause, a partition)
    started(node(store, "n2", hotel, lease=5.0))  # may take p1 over, or n1 may take it back
    # n1's next renewal is refused: it stops its sagas and takes a new lease; p1 is finished
    # by whichever node owns it then, as recovery does (no commit decision: rolled back), and
    # n1's caller gets that outcome.
    outcome = future.get(timeout=15)
    assert outcome == SagaOutcome("p1", False, "interrupted")
    assert wait_until(lambda: n1.running and n1.metrics()["leases_lost"] == 1, 10)
    epochs = {lease.node_id: lease.epoch for lease in store.leases()}
    assert epochs["n1"] >= 2  # fenced off: the first epoch's writes are refused
    with pytest.raises(LeaseLost):
        store.fenced(Fence("n1", 1)).append(saga_persistence_id(BOOKING, "p1"), [object()], 99)
    assert n1.run("p2", Booking("Bob", 1), timeout=10).committed  # and it works again
    assert max(hotel.applied.values()) == 1


class FakeClock:
    """The store's clock, stepped by the test (it never goes back)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.offset = 0.0

    def __call__(self) -> float:
        with self.lock:
            return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.offset += seconds


class LosingStore(InMemoryLeaseJournal):
    """A store whose fenced appends of a saga's start fail as a lost connection would: the
    first `lose` of them after storing the events (the COMMIT's answer was lost), or before
    (`stored=False`: the transaction never committed); and whose next `unreadable` reads
    fail the same way (the connection is not back yet)."""

    def __init__(self, lose: int, stored: bool, unreadable: int = 0) -> None:
        super().__init__()
        self.lose, self.stored, self.unreadable = lose, stored, unreadable

    def fenced(self, fence: Fence) -> Any:
        handle = super().fenced(fence)
        store = self
        append, replay = handle.append, handle.replay

        def losing_append(persistence_id: str, events: Any, expected: int) -> int:
            if expected == 0 and store.lose > 0:
                store.lose -= 1
                if store.stored:
                    append(persistence_id, events, expected)
                raise ConnectionError("connection lost while committing (simulated)")
            return append(persistence_id, events, expected)

        def failing_replay(persistence_id: str, *args: Any) -> Any:
            if store.unreadable > 0 and store.lose == 0:
                store.unreadable -= 1
                raise ConnectionError("connection lost (simulated)")
            return replay(persistence_id, *args)

        handle.append = losing_append  # type: ignore[method-assign]
        handle.replay = failing_replay  # type: ignore[method-assign]
        return handle


def test_a_start_whose_commit_answer_was_lost_carries_on(started):
    store, hotel = LosingStore(lose=1, stored=True), Hotel()
    n1 = started(node(store, "n1", hotel))
    # The start is in the journal, the node was told it failed: it reads the stream, finds the
    # start its own, and carries the saga on (it still holds the data): the order goes ahead.
    assert n1.run("lost-1", Booking("Ada", 2), timeout=10) == SagaOutcome("lost-1", True, None)
    assert store.owner(saga_persistence_id(BOOKING, "lost-1")) == "n1"
    assert hotel.confirmed == {"lost-1"} and max(hotel.applied.values()) == 1


def test_a_lost_commit_answer_with_the_journal_still_unreachable_is_resumed_by_the_lease_thread(started):
    store, hotel = LosingStore(lose=1, stored=True, unreadable=1), Hotel()
    n1 = started(node(store, "n1", hotel))
    # Neither the append's answer nor the read after it came back: the caller waits through the
    # journal, and the lease thread resumes the node's own unfinished saga that runs nowhere, as
    # recovery does (no commit decision: rolled back). The caller gets that outcome.
    outcome = n1.run("lost-2", Booking("Ada", 2), timeout=10)
    assert outcome == SagaOutcome("lost-2", False, "interrupted")
    assert n1.run("ok-1", Booking("Bob", 1), timeout=10).committed  # and the node goes on


def test_a_start_that_never_reached_the_journal_is_reported_not_started(started):
    store, hotel = LosingStore(lose=1, stored=False), Hotel()
    n1 = started(node(store, "n1", hotel))
    with pytest.raises(SystemNotRunning, match="was not started"):
        n1.run("lost-3", Booking("Ada", 2), timeout=10)
    assert store.highest_sequence_nr(saga_persistence_id(BOOKING, "lost-3")) == 0
    assert n1.run("lost-3", Booking("Ada", 2), timeout=10).committed  # sent again: it runs


def test_the_same_id_on_three_nodes_at_once_one_outcome_or_conflicts_never_an_error(started):
    store, hotel = InMemoryLeaseJournal(), Hotel()
    nodes = [started(node(store, f"n{i}", hotel, latency=0.02)) for i in (1, 2, 3)]
    for round_ in range(20):
        same = f"same-{round_}"
        futures = [n.submit(same, Booking("Ada", 1)) for n in nodes]
        assert len({f.get(timeout=10) for f in futures}) == 1
        other = f"other-{round_}"
        futures = [n.submit(other, Booking(f"guest {i}", 1)) for i, n in enumerate(nodes)]
        won, conflicts = 0, 0
        for future in futures:
            try:
                future.get(timeout=10)
                won += 1
            except SagaConflict:
                conflicts += 1
        assert (won, conflicts) == (1, 2)


def test_a_card_number_in_a_saga_id_is_never_logged(started, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="saga_actors")
    store, hotel = InMemoryLeaseJournal(), Hotel()
    n1 = started(node(store, "n1", hotel))
    for saga_id in ("4242424242424242", "4242-4242-4242-4242"):
        n1.run(saga_id, Booking("Ada", 12), timeout=10)  # refused: rolled back, logged
    assert caplog.records
    assert "4242424242424242" not in caplog.text and "4242-4242-4242-4242" not in caplog.text
    assert all(
        "4242424242424242" not in str(getattr(r, "saga_id", "")) for r in caplog.records
    )  # nor in the records' extra fields
