"""The LeaseStore contract (persistence/lease.py): leases, fencing, take-over and notices.

Run on the reference `InMemoryLeaseJournal` and on `PostgresJournal(mode="node")` (skipped
without SAGA_ACTORS_TEST_POSTGRES). `two_stores` gives two store objects on one shared
store, as two nodes have: the same object for the in-memory one, two journals on one
database for PostgreSQL. Leases are short (0.3 s); waiting for one to expire polls
`leases()` with a timeout.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from saga_actors.persistence import (
    ConcurrencyError,
    EventCodec,
    Fence,
    InMemoryLeaseJournal,
    LeaseLost,
    PostgresJournal,
)
from tests.conftest import wait_until

SHORT = 0.3  # seconds: a lease that expires during the test
LONG = 600.0  # seconds: one that does not


@dataclass(frozen=True)
class Step:
    n: int


@dataclass(frozen=True)
class Done:
    n: int


CODEC = EventCodec()
CODEC.register_all(Step, Done)


@pytest.fixture(params=["memory", "postgres"])
def two_stores(request):
    """Two store objects sharing one store: (a, b)."""
    if request.param == "memory":
        store = InMemoryLeaseJournal()
        yield store, store
        return
    url = request.getfixturevalue("postgres_url")
    a = PostgresJournal(url, CODEC, mode="node")
    b = PostgresJournal(url, CODEC, mode="node")
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def store(two_stores):
    return two_stores[0]


def expired(store, fence: Fence) -> bool:
    return any(lease.node_id == fence.node_id and lease.expires_in <= 0 for lease in store.leases())


def wait_expired(store, fence: Fence) -> None:
    wait_until(lambda: expired(store, fence), timeout=10, what=f"{fence.node_id}'s lease to expire")


# --- leases ---


def test_a_new_node_starts_at_epoch_1_and_is_refused_while_its_lease_is_live(store):
    fence = store.acquire_lease("n1", LONG)
    assert fence == Fence("n1", 1)
    assert store.acquire_lease("n1", LONG) is None  # another process holds that node id
    (lease,) = store.leases()
    assert (lease.node_id, lease.epoch) == ("n1", 1) and 0 < lease.expires_in <= LONG


def test_acquiring_again_after_release_or_expiry_bumps_the_epoch(store):
    first = store.acquire_lease("n1", LONG)
    store.release_lease(first)
    assert expired(store, first)
    second = store.acquire_lease("n1", SHORT)
    assert second == Fence("n1", 2)
    wait_expired(store, second)
    assert store.acquire_lease("n1", LONG) == Fence("n1", 3)


def test_renew_extends_a_live_lease_and_never_an_expired_one(store):
    fence = store.acquire_lease("n1", SHORT)
    assert store.renew_lease(fence, LONG)
    (lease,) = store.leases()
    assert lease.expires_in > 100
    assert not store.renew_lease(Fence("n1", 2), LONG)  # an epoch it never held
    store.release_lease(fence)
    assert not store.renew_lease(fence, LONG)
    assert expired(store, fence)
    store.release_lease(fence)  # lost already: nothing happens


def test_leases_are_sorted_by_node_id(store):
    for node in ("b", "a", "c"):
        store.acquire_lease(node, LONG)
    assert [lease.node_id for lease in store.leases()] == ["a", "b", "c"]


# --- fenced writes ---


def test_a_stale_epochs_append_is_refused_and_nothing_of_it_is_stored(store):
    old = store.acquire_lease("n1", LONG)
    store.fenced(old).append("s", [Step(1)], 0)
    store.release_lease(old)
    new = store.acquire_lease("n1", LONG)  # the node restarted: its old incarnation is fenced off
    with pytest.raises(LeaseLost) as refused:
        store.fenced(old).append("s", [Step(2)], 1)
    assert (refused.value.node_id, refused.value.epoch, refused.value.persistence_id) == ("n1", 1, "s")
    with pytest.raises(LeaseLost):
        store.fenced(old).append("t", [Step(1)], 0)  # a new stream too
    assert store.highest_sequence_nr("s") == 1 and store.persistence_ids() == ["s"]
    assert store.fenced(new).append("s", [Step(2)], 1) == 2  # the same node, its live epoch


def test_an_expired_leases_writes_are_refused(store):
    fence = store.acquire_lease("n1", SHORT)
    handle = store.fenced(fence)
    handle.append("s", [Step(1)], 0)
    wait_expired(store, fence)
    for write in (
        lambda: handle.append("s", [Step(2)], 1),
        lambda: handle.save_snapshot("s", 1, Done(1)),
        lambda: handle.delete_to("s", 1),
        lambda: handle.delete_snapshots("s", 1),
    ):
        with pytest.raises(LeaseLost):
            write()
    assert [e.event for e in store.replay("s")] == [Step(1)]
    assert store.load_snapshot("s") is None


def test_a_stream_owned_by_another_node_is_refused(two_stores):
    a, b = two_stores
    fa, fb = a.acquire_lease("a", LONG), b.acquire_lease("b", LONG)
    a.fenced(fa).append("s", [Step(1)], 0)
    assert b.owner("s") == "a"
    with pytest.raises(LeaseLost, match="owned by node a"):
        b.fenced(fb).append("s", [Step(2)], 1)
    with pytest.raises(LeaseLost):
        b.fenced(fb).save_snapshot("s", 1, Done(1))
    reported = []
    finished = threading.Event()
    b.fenced(fb).append_async("s", [Step(2)], 1, lambda h, e: (reported.append((h, e)), finished.set()))
    assert finished.wait(10)
    assert reported[0][0] is None and isinstance(reported[0][1], LeaseLost)
    assert [e.event for e in a.replay("s")] == [Step(1)]
    # Written without a fence: owned by no node, so no node's fenced write may touch it.
    a.append("free", [Step(1)], 0)
    assert a.owner("free") is None
    with pytest.raises(LeaseLost, match="no node"):
        a.fenced(fa).append("free", [Step(2)], 1)


def test_a_fenced_handle_lists_only_its_nodes_open_streams(two_stores):
    a, b = two_stores
    fa, fb = a.acquire_lease("a", LONG), b.acquire_lease("b", LONG)
    a.fenced(fa).append("job:1", [Step(1)], 0)
    a.fenced(fa).append("job:2", [Step(1), Done(2)], 0)
    b.fenced(fb).append("job:3", [Step(1)], 0)
    assert a.fenced(fa).open_persistence_ids("job:", (Done,)) == ["job:1"]
    assert b.fenced(fb).open_persistence_ids("job:", (Done,)) == ["job:3"]
    assert a.open_persistence_ids("job:", (Done,)) == ["job:1", "job:3"]


# --- take-over ---


def test_take_over_moves_only_the_dead_nodes_open_streams_with_the_prefix(two_stores):
    a, b = two_stores
    fa, fb = a.acquire_lease("a", SHORT), b.acquire_lease("b", LONG)
    dead = a.fenced(fa)
    dead.append("job:1", [Step(1)], 0)  # open
    dead.append("job:2", [Step(1), Done(2)], 0)  # finished
    dead.append("other:1", [Step(1)], 0)  # another prefix
    b.fenced(fb).append("job:3", [Step(1)], 0)  # b's own
    wait_expired(b, fa)
    assert b.take_over(fa, fb, "job:", (Done,)) == ["job:1"]
    assert [b.owner(p) for p in ("job:1", "job:2", "other:1", "job:3")] == ["b", "a", "a", "b"]
    assert b.fenced(fb).open_persistence_ids("job:", (Done,)) == ["job:1", "job:3"]
    assert b.fenced(fb).append("job:1", [Done(2)], 1) == 2  # b carries it on
    with pytest.raises(LeaseLost):  # a, paused past its lease, resumes: fenced off
        dead.append("other:1", [Step(2)], 1)
    assert {lease.node_id: lease.epoch for lease in b.leases()}["a"] == 2
    assert a.acquire_lease("a", LONG) == Fence("a", 3)  # a restarts at a new epoch


def test_take_over_returns_none_when_the_node_renewed_or_another_took_it_first(two_stores):
    a, b = two_stores
    fa, fb, fc = a.acquire_lease("a", SHORT), b.acquire_lease("b", LONG), b.acquire_lease("c", LONG)
    a.fenced(fa).append("job:1", [Step(1)], 0)
    assert a.renew_lease(fa, LONG)  # renewed in time
    assert b.take_over(fa, fb, "job:", (Done,)) is None
    assert b.owner("job:1") == "a"
    a.release_lease(fa)  # now it expires
    assert b.take_over(fa, fc, "job:", (Done,)) == ["job:1"]  # c was first
    assert b.take_over(fa, fb, "job:", (Done,)) is None  # a's epoch moved on
    assert b.owner("job:1") == "c"


def test_take_over_by_a_node_without_a_live_lease_raises_lease_lost(two_stores):
    a, b = two_stores
    fa, fb = a.acquire_lease("a", SHORT), b.acquire_lease("b", LONG)
    wait_expired(b, fa)
    b.release_lease(fb)
    with pytest.raises(LeaseLost):
        b.take_over(fa, fb, "", ())
    assert {lease.node_id: lease.epoch for lease in b.leases()}["a"] == 1  # not fenced off


def test_a_live_lease_is_not_taken_over(two_stores):
    a, b = two_stores
    fa, fb = a.acquire_lease("a", LONG), b.acquire_lease("b", LONG)
    a.fenced(fa).append("job:1", [Step(1)], 0)
    assert b.take_over(fa, fb, "job:", (Done,)) is None
    assert b.owner("job:1") == "a"


# --- optimistic concurrency between two writers ---


def test_two_writers_with_the_same_expected_sequence_nr_exactly_one_wins(two_stores):
    a, b = two_stores
    rounds = 40
    outcomes: dict[str, list[str]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def writer(name: str, store) -> None:
        for n in range(rounds):
            barrier.wait(10)
            try:
                store.append("race", [Step(n)], n)  # both saw n events
                outcomes[name].append("won")
            except ConcurrencyError:
                outcomes[name].append("lost")
            barrier.wait(10)  # both done with round n

    threads = [threading.Thread(target=writer, args=(name, s)) for name, s in (("a", a), ("b", b))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for n in range(rounds):
        assert sorted((outcomes["a"][n], outcomes["b"][n])) == ["lost", "won"], n
    assert [e.event for e in a.replay("race")] == [Step(n) for n in range(rounds)]


# --- notices ---


def test_a_notice_published_on_one_store_reaches_a_subscriber_on_another(two_stores):
    a, b = two_stores
    received: list[str] = []
    got = threading.Condition()

    def on_notice(payload: str) -> None:
        with got:
            received.append(payload)
            got.notify_all()

    unsubscribe = b.subscribe(on_notice)
    a.publish("work:é✓")
    a.publish("x" * 1000)
    with got:
        assert got.wait_for(lambda: len(received) == 2, 10), received
    assert received == ["work:é✓", "x" * 1000]
    with pytest.raises(ValueError):
        a.publish("x" * 1001)
    unsubscribe()
    later: list[str] = []
    b.subscribe(later.append)
    a.publish("after")
    a.publish("marker")
    wait_until(lambda: "marker" in later, timeout=10, what="the marker notice")
    assert received == ["work:é✓", "x" * 1000]  # nothing after unsubscribing


def test_take_over_waits_for_a_write_in_flight_and_then_sees_it(postgres_url):
    """PostgreSQL: the dead node's append holds its node row FOR SHARE until it commits; the
    take-over's UPDATE of that row waits for it, then finds the stream the append created."""
    # Long timeouts: this test holds the write for as long as it takes to see the take-over wait
    # (the short defaults, which let a take-over give up and try again, are tested elsewhere).
    a = PostgresJournal(postgres_url, CODEC, mode="node", writer_idle_timeout=60)
    b = PostgresJournal(postgres_url, CODEC, mode="node", lease_call_timeout=60)
    try:
        fa, fb = a.acquire_lease("a", SHORT), b.acquire_lease("b", LONG)
        in_flight, let_go = threading.Event(), threading.Event()

        def hold() -> None:
            in_flight.set()
            assert let_go.wait(30)

        a.before_commit = hold
        appended: list[object] = []
        a.fenced(fa).append_async("job:x", [Step(1)], 0, lambda h, e: appended.append((h, e)))
        assert in_flight.wait(10)
        a.before_commit = None
        wait_expired(b, fa)
        taken: list[object] = []
        taker = threading.Thread(target=lambda: taken.append(b.take_over(fa, fb, "job:", (Done,))))
        taker.start()
        wait_until(lambda: _waiting_for_a_lock(b, "UPDATE saga_actors_nodes"), what="take_over to block")
        assert taken == []
        let_go.set()
        taker.join(10)
        assert taken == [["job:x"]]
        assert appended == [(1, None)]  # it committed: its lease was live when it locked the row
        assert b.owner("job:x") == "b"
        with pytest.raises(LeaseLost):
            a.fenced(fa).append("job:y", [Step(1)], 0)
    finally:
        a.close()
        b.close()


def _waiting_for_a_lock(store: PostgresJournal, query_start: str) -> bool:
    rows = store._read(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
        (query_start + "%",),
    )
    return bool(rows[0][0])
