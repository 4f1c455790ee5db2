"""One runtime as a node of a cluster: its lease, take-overs, and callers waiting on other nodes.

Generic: nothing here knows about orders. Several `SagaRuntime`s (nodes)
share one journal that is also a `LeaseStore` (PostgreSQL, or
`InMemoryLeaseJournal` in tests). The unit leased is the *node*, as DBOS
recovers a dead executor's workflows: each node holds one lease and owns
the saga streams it created; when its lease expires, another node fences it
off and takes over its unfinished sagas. (Per-node rather than per-partition
leases: one row to renew per node whatever its load, any node accepts any
saga without routing, and a take-over moves exactly the dead node's work.)

`ClusterMember` runs the thread "<name>-lease", which renews the lease
every `renew_every` seconds, takes over the sagas of nodes whose lease
expired, answers the callers waiting here for sagas another node runs
(`RemoteWaiters`), on a notice or every `poll_every` seconds, and
publishes the notices of the sagas that finished here. Nothing in it runs
in an actor, and no actor waits for it.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

from saga_actors.persistence.lease import MAX_NOTICE, Fence, LeaseLost, LeaseStore

__all__ = [
    "DEFAULT_LEASE",
    "ClusterMember",
    "LeaseUnavailable",
    "RemoteWaiters",
]

logger = logging.getLogger(__name__)

DEFAULT_LEASE = 10.0  # seconds a node's lease lasts without a renewal
RENEWALS_PER_LEASE = 3  # renewals tried within one lease: two may fail before it expires
POLL_EVERY = 1.0  # seconds between reads of the sagas callers here wait for (notices are faster)
ACQUIRE_POLL = 0.2  # seconds between tries to acquire a lease still held
OUTAGE_LOG_EVERY = 10.0  # seconds between log records of one store outage


class LeaseUnavailable(TimeoutError):
    """The node's lease could not be acquired in time: another live process holds this node id."""


class RemoteWaiters:
    """Callers waiting on this node for sagas another node runs, answered from the journal.

    Thread-safe: filled from callers' threads and the runtime's, emptied by
    the lease thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, list[pykka.Future[Any]]] = {}

    def add(self, saga_id: str, futures: list[pykka.Future[Any]]) -> None:
        if futures:
            with self._lock:
                self._waiting.setdefault(saga_id, []).extend(futures)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._waiting)

    def pop(self, saga_id: str) -> list[pykka.Future[Any]]:
        with self._lock:
            return self._waiting.pop(saga_id, [])

    def pop_all(self) -> list[pykka.Future[Any]]:
        with self._lock:
            futures = [f for fs in self._waiting.values() for f in fs]
            self._waiting = {}
            return futures


class ClusterMember:
    """The lease of one node, kept by a thread of its own (see the module docstring).

    Callbacks, all run in the lease thread ("<name>-lease"):
        on_lost(): the lease is lost (not renewed in time, or fenced off by a
            take-over); returns once the node has stopped its sagas and
            acquired a new lease (`rejoin`), or the member is stopping.
        on_taken(saga_ids): this node took over these sagas of a dead node.
        check(saga_ids): read these sagas' streams and answer their callers
            (None: every saga a caller here waits for).
        reconcile(): resume this node's unfinished sagas that run nowhere (every
            lease).
    """

    def __init__(
        self,
        store: LeaseStore,
        node_id: str,
        *,
        lease: float,
        renew_every: float | None,
        prefix: str,
        final_types: tuple[type, ...],
        on_lost: Callable[[], None],
        on_taken: Callable[[list[str]], None],
        check: Callable[[list[str] | None], None],
        reconcile: Callable[[], None],
        name: str,
        poll_every: float = POLL_EVERY,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.lease = lease
        self.renew_every = renew_every if renew_every is not None else lease / RENEWALS_PER_LEASE
        self.poll_every = poll_every
        self._prefix = prefix
        self._final_types = final_types
        self._on_lost = on_lost
        self._on_taken = on_taken
        self._check = check
        self._reconcile = reconcile
        self._name = name
        self._stopping = threading.Event()
        self._inbox: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._fence: Fence | None = None
        self._renewed_at = 0.0  # time.monotonic() before the last renewal that succeeded
        self._outage_logged = 0.0
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def fence(self) -> Fence | None:
        """The lease held now, or None."""
        return self._fence

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def acquire(self, timeout: float | None) -> Fence | None:
        """Acquire the node's lease, waiting while it is still held (the caller's thread); None if
        the member is stopping. Raises `LeaseUnavailable` after `timeout` seconds (None: wait as
        long as it takes), and what the store raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        logged = False
        while not self._stopping.is_set():
            started = time.monotonic()
            fence = self.store.acquire_lease(self.node_id, self.lease)
            if fence is not None:
                self._fence, self._renewed_at = fence, started
                logger.info("node %s: lease acquired at epoch %d", self.node_id, fence.epoch)
                return fence
            if deadline is not None and time.monotonic() >= deadline:
                raise LeaseUnavailable(
                    f"node {self.node_id}: its lease is held by another live process "
                    f"(waited {timeout:g} s); node ids must be unique"
                )
            if not logged:
                logger.warning(
                    "node %s: its lease is still held (a previous incarnation, or another process "
                    "with this node id): waiting for it to expire (at most %g s)",
                    self.node_id,
                    self.lease,
                )
                logged = True
            self._stopping.wait(ACQUIRE_POLL)
        return None

    def start(self) -> None:
        """Start the lease thread (after `acquire`)."""
        self._stopping.clear()
        self._unsubscribe = self.store.subscribe(self.notice)
        self._thread = threading.Thread(target=self._loop, name=f"{self._name}-lease", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop (any thread; does not wait)."""
        self._stopping.set()
        self._inbox.put(("stop", ""))

    def wait_stopping(self, seconds: float) -> bool:
        """Wait up to `seconds` for a stop request; True if there is one."""
        return self._stopping.wait(seconds)

    def join(self, timeout: float) -> None:
        """Wait for the thread to end (not from the thread itself), then stop listening."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def release(self) -> None:
        """Let the lease expire now, so that other nodes take over at once (a clean stop)."""
        fence, self._fence = self._fence, None
        if fence is None:
            return
        try:
            self.store.release_lease(fence)
            logger.info("node %s: lease released (epoch %d)", self.node_id, fence.epoch)
        except Exception as error:
            logger.warning("node %s: could not release its lease: %s", self.node_id, error)

    def notice(self, payload: str) -> None:
        """A notice from the store (its listener thread): a saga finished somewhere."""
        self._inbox.put(("notice", payload))

    def finished(self, saga_id: str) -> None:
        """A saga finished here (any thread): tell the other nodes."""
        self._inbox.put(("publish", saga_id))

    def poke(self, saga_id: str) -> None:
        """Check this saga's stream soon (a caller here just began waiting for it)."""
        self._inbox.put(("notice", saga_id))

    # --- the lease thread ---

    def _loop(self) -> None:
        next_renewal = time.monotonic() + self.renew_every
        next_poll = time.monotonic() + self.poll_every
        next_reconcile = time.monotonic() + self.lease
        while not self._stopping.is_set():
            now = time.monotonic()
            try:
                kind, payload = self._inbox.get(timeout=max(0.0, min(next_renewal, next_poll) - now))
            except queue.Empty:
                kind, payload = "", ""
            notices: set[str] = set()
            publish: list[str] = []
            while True:
                if kind == "notice":
                    notices.add(payload)
                elif kind == "publish":
                    publish.append(payload)
                try:
                    kind, payload = self._inbox.get_nowait()
                except queue.Empty:
                    break
            if self._stopping.is_set():
                break
            try:
                self._publish(publish)
                if notices:
                    self._check(sorted(notices))
                now = time.monotonic()
                if now >= next_renewal:
                    next_renewal = now + self.renew_every
                    if not self._renew():
                        self._on_lost()
                        next_renewal = time.monotonic() + self.renew_every
                        continue
                    self._take_over()
                if now >= next_poll:
                    next_poll = now + self.poll_every
                    self._check(None)
                if now >= next_reconcile:
                    next_reconcile = now + self.lease
                    self._reconcile()
            except Exception:  # the thread must live on: the next round tries again
                logger.exception("node %s: lease thread", self.node_id)

    def _renew(self) -> bool:
        """False once the lease is lost: refused by the store, or not renewed for a whole lease."""
        fence = self._fence
        if fence is None:
            return False
        started = time.monotonic()
        if started - self._renewed_at >= self.lease:
            logger.error(
                "node %s: lease not renewed for %.1f s (lease %g s): lost; stopping its sagas",
                self.node_id,
                started - self._renewed_at,
                self.lease,
            )
            return False
        try:
            renewed = self.store.renew_lease(fence, self.lease)
        except Exception as error:
            self._outage(f"cannot renew its lease ({type(error).__name__}: {error}); retrying")
            return True  # not lost yet: it is lost once a whole lease passes without a renewal
        if not renewed:
            logger.error(
                "node %s: lease lost at epoch %d (expired, or taken over); stopping its sagas",
                self.node_id,
                fence.epoch,
            )
            return False
        if self._outage_logged:
            logger.info("node %s: lease renewed again", self.node_id)
            self._outage_logged = 0.0
        self._renewed_at = started
        return True

    def _take_over(self) -> None:
        fence = self._fence
        if fence is None:
            return
        for lease in self.store.leases():
            if lease.node_id == self.node_id or lease.expires_in > 0 or lease.expires_in == -math.inf:
                continue  # itself, live, or taken over already
            try:
                taken = self.store.take_over(
                    Fence(lease.node_id, lease.epoch), fence, self._prefix, self._final_types
                )
            except LeaseLost:
                return  # this node's own lease is gone: the next renewal says so
            if taken is None:
                continue  # renewed, taken by another node, or its write in flight still holds it
            if taken:
                logger.warning(
                    "node %s: took over %d unfinished saga(s) of node %s (lease expired %.1f s ago)",
                    self.node_id,
                    len(taken),
                    lease.node_id,
                    -lease.expires_in,
                )
                self._on_taken(taken)

    def _publish(self, saga_ids: list[str]) -> None:
        """One notice per finished saga, all those queued in one transaction (one commit for a
        batch, not one per saga). An id a notice cannot hold (too long, a NUL) is found by the
        waiters' poll."""
        notices = [s for s in saga_ids if len(s) <= MAX_NOTICE and "\x00" not in s]
        if not notices:
            return
        try:
            self.store.publish(*notices)
        except Exception as error:  # best effort: the waiters' poll finds them
            self._outage(f"cannot publish ({type(error).__name__}: {error})")

    def _outage(self, problem: str) -> None:
        now = time.monotonic()
        if now - self._outage_logged >= OUTAGE_LOG_EVERY:
            logger.warning("node %s: %s", self.node_id, problem)
            self._outage_logged = now
