"""Node leases with fencing, for several writers (nodes) sharing one journal.

Generic: nothing here knows about orders or sagas. A *node* is a process
that writes to a shared journal. It writes only while it holds a *lease*: a
row in the store with the node's id, an *epoch* and an expiry, timed by the
store's clock (never the nodes' clocks). A lease is renewed before it
expires; one that expired may be *taken over* by another node, which bumps
its epoch first (fencing) and then owns its unfinished streams.

Every write through a `fenced(fence)` handle checks, in the same
transaction as the write, that the writer's lease is still live at the
epoch it was granted, and that the stream is new (then the writer owns it)
or already owned by the writer. A node paused past its lease therefore
cannot write once it resumes: its writes raise `LeaseLost`, and nothing
of them is stored. This is how Temporal fences a shard by its range id.

`InMemoryLeaseJournal` is the reference implementation (one process, the
store's clock being `time.monotonic`); `persistence.postgres` is the one that
spans machines. Both pass tests/test_lease_contract.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from saga_actors.persistence.journal import (
    MAX_SEQUENCE_NR,
    AppendCallback,
    ConcurrencyError,
    InMemoryJournal,
    JournalWithSnapshots,
    PersistentEvent,
    SelectedSnapshot,
)

__all__ = [
    "MAX_NOTICE",
    "Fence",
    "FencedHandle",
    "InMemoryLeaseJournal",
    "LeaseLost",
    "LeaseStore",
    "NodeLease",
    "check_lease_seconds",
    "check_node_id",
]

MAX_NODE_ID = 200  # characters
MAX_NOTICE = 1000  # characters in a notice (`LeaseStore.publish`)


class LeaseLost(Exception):
    """A write refused by fencing; nothing of it was stored.

    The writer `node_id` no longer holds its lease at `epoch` (it expired,
    or another node took over and bumped the epoch), or the stream
    `persistence_id` (None for a write that names none) is owned by
    another node.
    """

    def __init__(self, node_id: str, epoch: int, persistence_id: str | None, problem: str) -> None:
        self.node_id = node_id
        self.epoch = epoch
        self.persistence_id = persistence_id
        self.problem = problem
        where = f" writing {persistence_id}" if persistence_id is not None else ""
        super().__init__(f"node {node_id} (epoch {epoch}){where}: {problem}")

    def __reduce__(self) -> tuple[type[LeaseLost], tuple[str, int, str | None, str]]:
        return type(self), (self.node_id, self.epoch, self.persistence_id, self.problem)


@dataclass(frozen=True, slots=True)
class Fence:
    """A lease as its holder knows it: the node and the epoch it was granted at."""

    node_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class NodeLease:
    """A lease as the store knows it. `expires_in`: seconds until it expires by the store's
    clock (zero or less: expired)."""

    node_id: str
    epoch: int
    expires_in: float


def check_node_id(node_id: object) -> list[str]:
    """Problems with a node id (empty list: fine): a non-empty printable string of at most 200
    characters."""
    if not isinstance(node_id, str):
        return [f"node_id must be a string, got {type(node_id).__name__}"]
    if not node_id or len(node_id) > MAX_NODE_ID or not node_id.isprintable() or node_id.strip() != node_id:
        return [
            f"node_id must be 1 to {MAX_NODE_ID} printable characters without surrounding spaces, "
            f"got {node_id!r:.60}"
        ]
    return []


def check_lease_seconds(seconds: object, name: str = "lease") -> list[str]:
    """Problems with a lease duration (empty list: fine): a number of seconds in [0.1, 3600]."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0.1 <= seconds <= 3600:
        return [f"{name} must be a number of seconds from 0.1 to 3600, got {seconds!r:.40}"]
    return []


class LeaseStore(Protocol):
    """Leases, stream ownership and notices in a store shared by nodes.

    Times are seconds by the store's clock. Every method may be called from
    any thread; `subscribe` callbacks run in the store's listener thread.
    """

    def acquire_lease(self, node_id: str, seconds: float) -> Fence | None:
        """Grant `node_id` a lease for `seconds` at a new epoch (1 for a node never seen, the
        last epoch + 1 otherwise, so that its previous incarnation is fenced off), or None if
        the node's lease is still live (another process holds that node id, or this node's
        previous incarnation died less than a lease ago): try again once it expired."""
        ...

    def renew_lease(self, fence: Fence, seconds: float) -> bool:
        """Extend the lease to now + `seconds` if it is still held at `fence.epoch` and live;
        False (and nothing changed) if it was lost. An expired lease is never renewed."""
        ...

    def release_lease(self, fence: Fence) -> None:
        """Let the lease expire now (a clean stop: others take over at once); nothing if it was
        lost already."""
        ...

    def leases(self) -> list[NodeLease]:
        """Every node's lease, expired ones included, sorted by node id."""
        ...

    def take_over(
        self, dead: Fence, by: Fence, prefix: str, final_types: tuple[type, ...]
    ) -> list[str] | None:
        """Fence off `dead` (its epoch is bumped: waits for its writes in flight, which then
        commit before it or not at all) and give `by` the streams with `prefix` that `dead`
        owned and whose last event is not of one of `final_types`. Returns their ids, sorted;
        None if `dead` is not expired at `dead.epoch` any more (it renewed, or another node
        took over first). Raises `LeaseLost` if `by` does not hold a live lease. Once taken
        over, the dead node's lease shows `expires_in` of minus infinity (until it is acquired
        again), so that other nodes do not take it over once more."""
        ...

    def owner(self, persistence_id: str) -> str | None:
        """The node owning a stream, or None (no stream, or written without a fence)."""
        ...

    def fenced(self, fence: Fence) -> JournalWithSnapshots:
        """A journal handle on this store whose writes are fenced by `fence` (see the module
        docstring); its `open_persistence_ids` lists only the streams `fence.node_id` owns.
        Reads are not fenced. Closing the handle does not close the store."""
        ...

    def publish(self, *payloads: str) -> None:
        """Tell every subscriber, on every node, each payload (at most 1,000 characters each;
        ValueError, and nothing sent, otherwise), in order, once this call's one transaction
        commits. Best effort: a subscriber that was disconnected misses them, so a waiter must
        also poll."""
        ...

    def subscribe(self, on_notice: Callable[[str], None]) -> Callable[[], None]:
        """Call `on_notice(payload)` for each notice published from now on (in the store's
        listener thread; it must not block). Returns the function that unsubscribes."""
        ...


class InMemoryLeaseJournal(InMemoryJournal):
    """An in-memory journal with leases, for several nodes in one process (tests, examples).

    `clock` is the store's clock in seconds (`time.monotonic` by default; a
    test may step a fake one). Fenced writes check the lease under the same
    lock as the write, so a take-over waits for a write in flight.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        # Re-entrant: a fenced write checks its fence and writes under one hold of the lock
        # (InMemoryJournal's own methods take it again), so no take-over comes in between.
        self._lock = threading.RLock()  # type: ignore[assignment]
        self._clock = clock
        self._leases: dict[str, tuple[int, float]] = {}  # node id -> (epoch, expires at)
        self._owners: dict[str, str] = {}
        self._subscribers: list[Callable[[str], None]] = []

    # --- leases ---

    def acquire_lease(self, node_id: str, seconds: float) -> Fence | None:
        with self._lock:
            now = self._clock()
            held = self._leases.get(node_id)
            if held is not None and held[1] > now:
                return None
            epoch = held[0] + 1 if held is not None else 1
            self._leases[node_id] = (epoch, now + seconds)
            return Fence(node_id, epoch)

    def renew_lease(self, fence: Fence, seconds: float) -> bool:
        with self._lock:
            now = self._clock()
            if not self._live(fence, now):
                return False
            self._leases[fence.node_id] = (fence.epoch, now + seconds)
            return True

    def release_lease(self, fence: Fence) -> None:
        with self._lock:
            now = self._clock()
            if self._live(fence, now):
                self._leases[fence.node_id] = (fence.epoch, now)

    def leases(self) -> list[NodeLease]:
        with self._lock:
            now = self._clock()
            return [NodeLease(n, e, t - now) for n, (e, t) in sorted(self._leases.items())]

    def take_over(
        self, dead: Fence, by: Fence, prefix: str, final_types: tuple[type, ...]
    ) -> list[str] | None:
        with self._lock:
            now = self._clock()
            if not self._live(by, now):
                raise LeaseLost(by.node_id, by.epoch, None, "lease lost: cannot take over")
            held = self._leases.get(dead.node_id)
            if held is None or held[0] != dead.epoch or held[1] > now:
                return None
            self._leases[dead.node_id] = (dead.epoch + 1, -math.inf)  # taken over: see take_over
            taken = sorted(
                p
                for p, owner in self._owners.items()
                if owner == dead.node_id and p.startswith(prefix) and not self._finished(p, final_types)
            )
            for persistence_id in taken:
                self._owners[persistence_id] = by.node_id
            return taken

    def owner(self, persistence_id: str) -> str | None:
        with self._lock:
            return self._owners.get(persistence_id)

    def fenced(self, fence: Fence) -> JournalWithSnapshots:
        return _FencedInMemory(self, fence)

    # --- notices ---

    def publish(self, *payloads: str) -> None:
        for payload in payloads:
            if len(payload) > MAX_NOTICE:
                raise ValueError(f"a notice is at most {MAX_NOTICE} characters, got {len(payload)}")
        with self._lock:
            subscribers = list(self._subscribers)
        for payload in payloads:
            for on_notice in subscribers:
                on_notice(payload)

    def subscribe(self, on_notice: Callable[[str], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(on_notice)

        def unsubscribe() -> None:
            with self._lock:
                if on_notice in self._subscribers:
                    self._subscribers.remove(on_notice)

        return unsubscribe

    # --- for the fenced handles (under self._lock) ---

    def _live(self, fence: Fence, now: float) -> bool:
        held = self._leases.get(fence.node_id)
        return held is not None and held[0] == fence.epoch and held[1] > now

    def _finished(self, persistence_id: str, final_types: tuple[type, ...]) -> bool:
        events = self._events.get(persistence_id)
        return bool(
            events
            and events[-1].sequence_nr == self._highest.get(persistence_id)
            and isinstance(events[-1].event, final_types)
        )

    def _check_fence(
        self, fence: Fence, persistence_id: str | None, claim: bool, check_owner: bool = True
    ) -> None:
        if not self._live(fence, self._clock()):
            raise LeaseLost(fence.node_id, fence.epoch, persistence_id, "lease expired or taken over")
        if persistence_id is None or not check_owner:
            return
        owner = self._owners.get(persistence_id)
        if owner is None and claim and self._highest.get(persistence_id, 0) == 0:
            return
        if owner != fence.node_id:
            shown = f"node {owner}" if owner is not None else "no node (written without a fence)"
            raise LeaseLost(fence.node_id, fence.epoch, persistence_id, f"the stream is owned by {shown}")


class FencedHandle:
    """What every fenced handle shares (see `LeaseStore.fenced`): its `fence`, and reads that are
    the store's, unfenced. A backend subclasses it with the fenced writes and
    `open_persistence_ids`."""

    def __init__(self, store: JournalWithSnapshots, fence: Fence) -> None:
        self._reads = store
        self.fence = fence

    def replay(
        self,
        persistence_id: str,
        from_sequence_nr: int = 1,
        to_sequence_nr: int = MAX_SEQUENCE_NR,
        max_count: int = MAX_SEQUENCE_NR,
    ) -> list[PersistentEvent]:
        return self._reads.replay(persistence_id, from_sequence_nr, to_sequence_nr, max_count)

    def highest_sequence_nr(self, persistence_id: str) -> int:
        return self._reads.highest_sequence_nr(persistence_id)

    def persistence_ids(self, prefix: str = "") -> list[str]:
        return self._reads.persistence_ids(prefix)

    def load_snapshot(
        self, persistence_id: str, max_sequence_nr: int = MAX_SEQUENCE_NR
    ) -> SelectedSnapshot | None:
        return self._reads.load_snapshot(persistence_id, max_sequence_nr)

    def flush(self) -> None:
        self._reads.flush()

    def open(self) -> None:
        pass  # the store's lifecycle is its own

    def close(self) -> None:
        pass


class _FencedInMemory(FencedHandle):
    """A fenced handle on an `InMemoryLeaseJournal` (see `LeaseStore.fenced`)."""

    def __init__(self, store: InMemoryLeaseJournal, fence: Fence) -> None:
        super().__init__(store, fence)
        self._store = store

    def append(self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int) -> int:
        store = self._store
        with store._lock:
            store._check_fence(self.fence, persistence_id, claim=True, check_owner=False)  # the lease first
            highest = store._highest.get(persistence_id, 0)
            if expected_sequence_nr != highest:  # then the sequence: a stale writer learns that
                raise ConcurrencyError(
                    f"{persistence_id}: expected sequence number {expected_sequence_nr}, "
                    f"journal is at {highest}"
                )
            store._check_fence(self.fence, persistence_id, claim=True)  # then the stream's owner
            now = time.time()
            stored = store._events.setdefault(persistence_id, [])
            for offset, event in enumerate(events, start=1):
                stored.append(PersistentEvent(persistence_id, highest + offset, event, now))
            store._highest[persistence_id] = highest + len(events)
            if events:
                store._owners.setdefault(persistence_id, self.fence.node_id)
            return highest + len(events)

    def append_async(
        self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int, on_done: AppendCallback
    ) -> None:
        try:
            highest = self.append(persistence_id, events, expected_sequence_nr)
        except (ConcurrencyError, LeaseLost) as error:
            on_done(None, error)
        else:
            on_done(highest, None)

    def open_persistence_ids(self, prefix: str, final_types: tuple[type, ...]) -> list[str]:
        store = self._store
        with store._lock:
            return sorted(
                p
                for p, owner in store._owners.items()
                if owner == self.fence.node_id
                and p.startswith(prefix)
                and not store._finished(p, final_types)
            )

    def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        with self._store._lock:
            self._store._check_fence(self.fence, persistence_id, claim=False)
            self._store.delete_to(persistence_id, to_sequence_nr)

    def save_snapshot(self, persistence_id: str, sequence_nr: int, snapshot: Any) -> None:
        with self._store._lock:
            self._store._check_fence(self.fence, persistence_id, claim=False)
            self._store.save_snapshot(persistence_id, sequence_nr, snapshot)

    def delete_snapshots(self, persistence_id: str, max_sequence_nr: int) -> None:
        with self._store._lock:
            self._store._check_fence(self.fence, persistence_id, claim=False)
            self._store.delete_snapshots(persistence_id, max_sequence_nr)
