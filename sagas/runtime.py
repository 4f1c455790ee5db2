"""`SagaRuntime`: run your own sagas over your own participants.

A runtime is a supervision tree plus a small blocking API::

    runtime (rest_for_one)
    |-- journal        its writer (SQLite file, in memory, or one you give)
    |-- timer          every delay: retries, attempt timeouts, simulated latency
    |-- (resources)    what the participants use that is not an actor, e.g. an HTTP client
    |-- participants (one_for_one)
    |   `-- one child per `Participant` you register, each behind a stable address
    `-- sagas (one_for_one)
        `-- saga hosts: a few threads hosting one saga actor per saga in flight

You give it a `SagaDefinition` (stages of steps, each an action and its
compensation, and a pivot) and the participants its steps name. Each
participant is an actor that answers the request/reply protocol of
`sagas.protocol`; `sagas.participant.ParticipantActor` makes writing an
event-sourced, idempotent one a matter of three pure functions. Then::

    with SagaRuntime(TRIP, participants=[...], journal="trip.db") as runtime:
        outcome = runtime.run("trip-1", TripData(...), timeout=10)

What it gives every saga: a journal stream of its own (`saga:<name>:<id>`),
recovery after a crash (a saga that journaled its commit decision is rolled
forward, any other is rolled back: presumed abort), supervision (a crashed
participant or saga restarts alone, from its journal), retries with backoff
and jitter, an idempotent start by saga id (`submit` twice, one saga; other
data under the same id is a `SagaConflict`), waiting for the outcome,
`wait_idle`, counters, and `kill` for fault drills.

Cluster mode (`node_id=...` on a journal shared by nodes, PostgreSQL): any
number of runtimes (nodes) of one definition share the journal. A saga id
is run by one node cluster-wide: the node that first journals its start
owns it; the same id submitted on another node waits for its outcome
through the journal. Each node holds a lease; a node whose lease expired is
fenced off and its unfinished sagas are taken over by another node (see
`sagas.cluster`).

Threads: the public methods may be called from any thread except a
participant's or a saga host's (they block). Callbacks given to the
runtime say which thread runs them.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, cast

import pykka

from saga_actors.persistence.journal import ConcurrencyError, InMemoryJournal, JournalWithSnapshots
from saga_actors.persistence.lease import Fence, LeaseLost, LeaseStore, check_lease_seconds, check_node_id
from saga_actors.persistence.serialization import EventCodec
from saga_actors.persistence.sqlite import SQLiteJournal
from saga_actors.sagas.cluster import DEFAULT_LEASE, ClusterMember, RemoteWaiters
from saga_actors.sagas.definition import SagaDefinition
from saga_actors.sagas.engine import (
    DURABLE_EVENTS,
    FINAL_EVENTS,
    CommitDecided,
    SagaState,
    SagaView,
    Start,
    decide,
    evolve,
    is_durable,
    view,
)
from saga_actors.sagas.host import SagaFinished, SagaHost, SagaHosts, SagaSpec, saga_persistence_id
from saga_actors.sagas.metrics import HistogramData, Metrics
from saga_actors.sagas.policy import RetryPolicy, is_finite_number, show_parameter
from saga_actors.sagas.prometheus import DEFAULT_HOST, MetricsEndpoint
from saga_actors.sagas.redaction import mask_digits
from saga_actors.sagas.simulation import FaultInjector, FaultPlan, SimulatedLink
from saga_actors.supervision import (
    ONE_FOR_ONE,
    REST_FOR_ONE,
    Address,
    Backoff,
    ChildSpec,
    FailureReport,
    Intensity,
    ResourceActor,
    kill,
    start_supervisor,
)
from saga_actors.supervision.timer import Recipient, Timer

__all__ = [
    "DEFAULT_RETENTION",
    "Participant",
    "ParticipantContext",
    "Resource",
    "RuntimeRecovery",
    "SagaConflict",
    "SagaFailed",
    "SagaFuture",
    "SagaOutcome",
    "SagaRegistry",
    "SagaRuntime",
    "SystemNotRunning",
]

logger = logging.getLogger(__name__)

QUERY_TIMEOUT = 10.0  # seconds a query to a participant may take (it waits out a restart)
VIEW_TIMEOUT = 2.0  # seconds a saga may take to say what it is doing
RECOVERY_TIMEOUT = 600.0  # seconds an actor may take to replay its journal
DEFAULT_SNAPSHOT_EVERY = 1000  # events between snapshots of the long-lived participants
# Seconds a participant remembers finished work (a repeat gets its first answer, a late request
# is refused): idempotency keys are commonly kept for at least 24 h. It must exceed the longest
# a request can be delayed (on the wire, in a retry, in a queue).
DEFAULT_RETENTION = 24 * 3600
DEFAULT_HOSTS = 2  # threads hosting the sagas (each saga is an actor, not a thread)

# Supervision defaults (why: see the README, "Supervision").
PARTICIPANTS_INTENSITY = Intensity(max_restarts=1000, within_seconds=5.0)
PARTICIPANTS_BACKOFF = Backoff(min_backoff=0.001, max_backoff=0.004, random_factor=0.1, reset_after=1.0)
SAGAS_INTENSITY = Intensity(max_restarts=1000, within_seconds=10.0)
SAGAS_BACKOFF = Backoff(min_backoff=0.001, max_backoff=0.005, random_factor=0.2, reset_after=1.0)
HOSTS_INTENSITY = Intensity(max_restarts=3, within_seconds=30.0)
HOSTS_BACKOFF = Backoff(min_backoff=0.01, max_backoff=0.2, random_factor=0.2, reset_after=10.0)
ROOT_INTENSITY = Intensity(max_restarts=2, within_seconds=30.0)
ROOT_BACKOFF = Backoff(min_backoff=0.05, max_backoff=0.5, random_factor=0.2, reset_after=30.0)

# Counters every runtime keeps (the hosts count retries, compensations, stuck steps).
RUNTIME_METRICS = ("retries", "compensations", "restarts", "sagas_stuck", "sagas_suspended")
# Counters of a node in cluster mode.
CLUSTER_METRICS = ("sagas_taken_over", "leases_lost", "sagas_awaited_elsewhere")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

_ROOT_CHILDREN = ("journal", "timer", "participants", "sagas")  # the root supervisor's own children
FOREVER = 10**9  # seconds (~32 years): any timeout this long waits as long as it takes
_WAIT_SLICE = 60.0  # a caller's wait is cut in slices this long (threading refuses huge timeouts)

# Runtimes still running when the interpreter exits are stopped cleanly then
# (their actors run on daemon threads, so a program that forgets stop() exits).
_RUNNING: weakref.WeakSet[SagaRuntime] = weakref.WeakSet()


@atexit.register
def _stop_running_runtimes() -> None:
    for runtime in list(_RUNNING):
        with contextlib.suppress(Exception):
            runtime.stop()


# --- errors and outcomes ---


class SystemNotRunning(RuntimeError):
    """The runtime is not started, or stopped (or failed) before the outcome was known."""


class SagaFailed(RuntimeError):
    """A saga failed again and again as soon as it was restarted (a bug, or data it cannot
    handle), and was suspended: it stays unfinished in the journal, and the next `start()`
    resumes it. `error` is its last failure."""

    def __init__(self, saga_id: str, error: BaseException) -> None:
        self.saga_id, self.error = saga_id, error
        super().__init__(
            f"saga {saga_id!r} failed repeatedly ({type(error).__name__}: {error}"[:300]
            + "); suspended until the next start, unfinished in the journal"
        )


class SagaConflict(Exception):
    """A saga id was reused with different data: one id, one saga."""

    def __init__(self, saga_id: str, message: str | None = None) -> None:
        self.saga_id = saga_id
        super().__init__(
            message or f"saga {saga_id!r} was already started with different data; use a new saga id"
        )


@dataclass(frozen=True, slots=True)
class SagaOutcome:
    """How a saga ended: `committed` (every step done) or rolled back, with the `reason`."""

    saga_id: str
    committed: bool
    reason: str | None = None


@dataclass(frozen=True)
class RuntimeRecovery:
    """What `start()` found in the journal: sagas resumed, and how."""

    sagas_resumed: int = 0
    rolled_forward: int = 0  # the commit decision was journaled: driven to the end
    rolled_back: int = 0  # no decision: presumed abort, compensated


T = TypeVar("T")


class SagaFuture(Generic[T]):
    """The outcome of one submitted saga: `get()` waits for it.

    `saga_id` is None for a request refused before it had an id.
    """

    noun = "saga"

    def __init__(
        self,
        future: pykka.Future[T],
        saga_id: str | None,
        describe: Callable[[str], str | None] | None = None,
    ) -> None:
        self._future = future
        self.saga_id = saga_id
        self._describe = describe

    def get(self, timeout: float | None = None) -> T:
        """Wait for the outcome; raise TimeoutError if unknown after `timeout` seconds.

        `timeout` is in seconds; `None` (or any huge value, `inf` included)
        waits as long as it takes; a negative, NaN or non-number timeout is
        a ValueError. Raises the request's error too (`SagaConflict`), and
        `SystemNotRunning` if the runtime stops first. A timeout does not
        cancel the saga: it carries on, and the TimeoutError says what it is
        waiting for.
        """
        seconds = check_timeout(timeout)
        deadline = None if seconds is None or math.isinf(seconds) else time.monotonic() + seconds
        while True:
            remaining = _WAIT_SLICE if deadline is None else min(deadline - time.monotonic(), _WAIT_SLICE)
            try:
                return self._future.get(timeout=max(remaining, 0.0))
            except pykka.Timeout:
                if deadline is None or time.monotonic() < deadline:
                    continue
            waiting = self._describe(self.saga_id) if self._describe and self.saga_id else None
            raise TimeoutError(
                f"{self.noun} {self._shown_id()!r}: outcome not known after {timeout} s"
                + (f" ({waiting})" if waiting else "")
                + "; it carries on"
            ) from None

    @property
    def future(self) -> pykka.Future[T]:
        """The pykka future under this one (to chain callbacks: `add_done_callback`)."""
        return self._future

    def _shown_id(self) -> str:
        return self.saga_id or ""


def answer(future: pykka.Future[Any], value: Any, error: BaseException | None = None) -> None:
    """Answer a caller once; a second answer is dropped (never raised into whoever answers)."""
    try:
        if error is not None:
            future.set_exception(exc_info=(type(error), error, None))
        else:
            future.set(value)
    except queue.Full:
        pass  # answered already


# --- sagas in flight and callers waiting (outside every actor: they survive its restarts) ---


_MISSING = object()


class SagaRegistry:
    """The sagas in flight and the callers waiting for them, kept outside every actor.

    *running* maps each saga in flight to what restarts it (for `submit`,
    its data; None for a saga recovered from the journal at start). It is
    filled when a saga is submitted or recovered and emptied when its end is
    durable, so it cannot drift from the journal; every start rebuilds it.
    *waiters* are the futures of callers waiting for a saga's outcome,
    answered with `outcome_of(finished)` once the saga's end is durable.

    Thread-safe: called from callers' threads, saga hosts' threads and the
    journal's thread. Subclass it to wait for something else than a
    `SagaOutcome` (the order system answers with a bool).
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._running: dict[str, Any] = {}
        self._since: dict[str, float] = {}  # saga id in flight -> when it began (epoch seconds)
        self._waiters: dict[str, list[pykka.Future[Any]]] = {}

    def outcome_of(self, finished: SagaFinished) -> Any:
        """What the callers of a finished saga are answered with."""
        return SagaOutcome(finished.saga_id, finished.committed, finished.reason)

    def begin(
        self, saga_id: str, value: Any, reply: pykka.Future[Any] | None, same: Callable[[Any], bool]
    ) -> Literal["new", "joined", "conflict"]:
        """Register a saga about to start, with `reply` waiting for it. If it is in flight
        already, `same(its value)` says whether this is a repeat ("joined", `reply` waits for
        it) or another saga under the same id ("conflict", nothing registered)."""
        with self._lock:
            if saga_id in self._running:
                if not same(self._running[saga_id]):
                    return "conflict"
                self._add_waiter(saga_id, reply)
                return "joined"
            self._running[saga_id] = value
            self._since[saga_id] = time.time()
            self._add_waiter(saga_id, reply)
            return "new"

    def _add_waiter(self, saga_id: str, reply: pykka.Future[Any] | None) -> None:
        if reply is not None:  # each caller's own future: never listed twice, no scan needed
            self._waiters.setdefault(saga_id, []).append(reply)

    def finished(self, saga_id: str, outcome: Any, error: BaseException | None = None) -> bool:
        """The saga is over (its end is durable, or it was refused with `error`): answer its
        waiters. False if it was not in flight."""
        with self._lock:
            known = self._running.pop(saga_id, _MISSING) is not _MISSING
            self._since.pop(saga_id, None)
            futures = self._waiters.pop(saga_id, [])
            self._lock.notify_all()
        for future in futures:
            answer(future, outcome, error)
        return known

    def running(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._running)

    def conflict(self, saga_id: str) -> Exception:
        """The error a caller gets for a saga id reused with other data."""
        return SagaConflict(saga_id)

    def adopt(self, saga_ids: Iterable[str]) -> list[str]:
        """Register sagas recovered from the journal (taken over from another node) as in flight,
        with no caller; returns those that were not in flight already."""
        with self._lock:
            new = [saga_id for saga_id in saga_ids if saga_id not in self._running]
            for saga_id in new:
                self._running[saga_id] = None
                self._since[saga_id] = 0.0
            return new

    def abandon(self, saga_id: str) -> list[pykka.Future[Any]]:
        """The saga is not run here (another node runs it): forget it, unanswered, and return its
        waiting callers' futures."""
        with self._lock:
            self._running.pop(saga_id, None)
            self._since.pop(saga_id, None)
            futures = self._waiters.pop(saga_id, [])
            self._lock.notify_all()
            return futures

    def abandon_all(self) -> dict[str, list[pykka.Future[Any]]]:
        """Every saga is no longer run here (the node lost its lease): forget them all, unanswered,
        and return the waiting callers' futures by saga id."""
        with self._lock:
            waiters = self._waiters
            self._waiters, self._running, self._since = {}, {}, {}
            self._lock.notify_all()
            return waiters

    def is_running(self, saga_id: str) -> bool:
        with self._lock:
            return saga_id in self._running

    def in_flight(self) -> int:
        with self._lock:
            return len(self._running)

    def in_flight_since(self) -> float | None:
        """When the oldest saga in flight began (epoch seconds; 0 for one recovered at start,
        whose start time is not known), or None if none is in flight."""
        with self._lock:
            return min(self._since.values(), default=None)

    def wait_idle(self, timeout: float | None) -> bool:
        """True once nothing is in flight (False after `timeout` seconds)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._running, timeout)

    def reset(self, running: dict[str, Any], error: BaseException | None) -> None:
        """Start afresh with `running` (from the journal); fail every waiting caller with `error`."""
        with self._lock:
            futures = self._drop_waiting()
            self._running = dict(running)
            self._since = dict.fromkeys(running, 0.0)
            self._lock.notify_all()
        if error is not None:
            for future in {id(f): f for f in futures}.values():  # a caller may be listed twice
                answer(future, None, error)

    def _drop_waiting(self) -> list[pykka.Future[Any]]:
        """Every waiting caller, forgotten (called under the lock; subclasses add theirs)."""
        futures = [f for fs in self._waiters.values() for f in fs]
        self._waiters = {}
        return futures


# --- participants ---


@dataclass(frozen=True)
class ParticipantContext:
    """What a participant's `start` function gets (it runs in the participants' supervisor's thread).

    `faults` is the participant's seeded dice (None without a `FaultPlan`):
    pass it to `ParticipantActor` so faults strike at its door. `options`
    are the keyword arguments `ParticipantActor.start_recovered` takes
    (snapshot spacing, retention, timer, the in-flight watermark, the replay
    timeout).
    """

    name: str
    journal: JournalWithSnapshots
    timer: Timer
    faults: FaultInjector | None
    metrics: Metrics
    options: Mapping[str, Any]


@dataclass(frozen=True)
class Participant:
    """One participant of the sagas: the name steps use, and how to start its actor.

    start(context) -> pykka.ActorRef: starts one incarnation (again after
        every crash: it must recover its state, e.g. from its journal
        stream). Runs in the participants' supervisor's thread.
    faults: a simulated wire to it (latency) and faults at its door
        (unavailable, crashes), from a seeded generator; None: a perfect
        wire.
    """

    name: str
    start: Callable[[ParticipantContext], pykka.ActorRef[Any]]
    faults: FaultPlan | None = None


@dataclass(frozen=True)
class Resource:
    """Something the participants use that is not an actor (an HTTP client's event loop, a pool).

    The runtime opens it when it starts, before the participants, and closes
    it when it stops, after them: `open()` in the starting thread (an error
    fails `start()`), `close()` in the resource's own supervised actor's
    thread. `watch(report)`, if given, hands the resource a callable to call
    from any thread if it fails on its own (its thread died): it is then
    closed and opened again, and the participants and sagas restart after
    it (`rest_for_one`). It may be opened again after a close (a runtime can
    be started again). See `supervision.resource.ResourceActor`.
    """

    name: str
    open: Callable[[], Any]
    close: Callable[[], Any]
    watch: Callable[[FailureReport], Any] | None = None


# --- the runtime ---


@dataclass(frozen=True, slots=True)
class _Submitted:
    """A saga started by `submit`: what restarts it while this process runs."""

    data: Any
    ephemeral: Any = field(repr=False)  # secrets: never in a repr


class SagaRuntime:
    """Runs the sagas of one `SagaDefinition` over registered participants.

    Arguments (keyword-only after `definition`; ValueError names each bad one):
        participants: the `Participant`s the steps name (every step's
            participant must be registered, and names are unique).
        journal: a SQLite file path, a PostgreSQL URL ("postgresql://...",
            needs the extra `postgres`), None (in memory: kept across
            `stop()` and `start()` of this object), or a journal object you
            opened.
        codec: the types a SQLite journal may hold besides the saga
            engine's own events (your saga data, your participants' events
            and states); ignored for a journal object.
        retry: how steps are retried (attempt timeout, backoff, jitter).
        retention: seconds participants remember finished work (the
            default `DEFAULT_RETENTION` is 24 h).
        snapshot_every: events between participants' snapshots (None: never).
        hosts: threads hosting the sagas.
        seed: seeds the retry jitter (faults have their own seeds).
        name: names the threads and log records.
        registry: what tracks sagas in flight and callers (a
            `SagaRegistry` by default); `spec_for(saga_id, value, fresh)`
            turns a registry value into the `SagaSpec` that (re)starts it.
        on_finish(SagaFinished): called once a saga's end is durable, in
            a saga host's or the journal's thread; must not block.
        prepare(journal): called by `start()` in the caller's thread once
            the tree runs and before sagas resume (e.g. to seed state).
        metric_names: counters listed in `metrics()` from the start.
        metrics_port: serve the metrics in the Prometheus text format over
            HTTP from `start()` to `stop()` on `metrics_host` (local only by
            default); 0 picks a free port (`metrics_port` says which once
            started). Needs the extra `metrics` (ImportError naming it).
        resources: `Resource`s the participants use (e.g. the HTTP client of
            `sagas.remote`), opened before them and closed after them.
        node_id: run as this node of a cluster (see the module docstring):
            the journal must be shared by nodes - a PostgreSQL URL, or a
            journal object that is a `LeaseStore`. `start()` waits (at most
            `lease` seconds) while a previous incarnation's lease is live.
        lease: seconds a node's lease lasts without a renewal (0.1 to 3600);
            renewed every `renew_every` seconds (default a third of it). A
            dead node's sagas are taken over within `lease + renew_every`.
    """

    def __init__(
        self,
        definition: SagaDefinition,
        *,
        participants: Sequence[Participant],
        journal: str | os.PathLike[str] | JournalWithSnapshots | None = None,
        codec: EventCodec | None = None,
        retry: RetryPolicy | None = None,
        retention: float = DEFAULT_RETENTION,
        snapshot_every: int | None = DEFAULT_SNAPSHOT_EVERY,
        hosts: int = DEFAULT_HOSTS,
        seed: int | None = None,
        name: str = "saga-runtime",
        registry: SagaRegistry | None = None,
        spec_for: Callable[[str, Any, bool], SagaSpec] | None = None,
        on_finish: Callable[[SagaFinished], None] | None = None,
        prepare: Callable[[JournalWithSnapshots], None] | None = None,
        metric_names: Iterable[str] = (),
        metrics_port: int | None = None,
        metrics_host: str = DEFAULT_HOST,
        participants_intensity: Intensity = PARTICIPANTS_INTENSITY,
        participants_backoff: Backoff = PARTICIPANTS_BACKOFF,
        root_intensity: Intensity = ROOT_INTENSITY,
        resources: Sequence[Resource] = (),
        node_id: str | None = None,
        lease: float = DEFAULT_LEASE,
        renew_every: float | None = None,
    ) -> None:
        problems = _check_arguments(definition, participants, journal, codec, retry, hosts, name)
        problems += _check_cluster(journal, node_id, lease, renew_every)
        problems += _check_resources(resources)
        if not (is_finite_number(retention) and 0 < retention < FOREVER):
            problems.append(
                f"retention must be a positive number of seconds below 10**9, got {show_parameter(retention)}"
            )
        if snapshot_every is not None and (
            isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1
        ):
            problems.append(f"snapshot_every must be a positive integer or None, got {snapshot_every!r:.40}")
        if problems:
            raise ValueError("invalid SagaRuntime arguments: " + "; ".join(problems))
        self.definition = definition
        self.name = name
        self._participants = tuple(participants)
        self._resources = tuple(resources)
        self._journal_arg = journal
        self._codec = codec
        self._retry = retry or RetryPolicy()
        self._retention = float(retention)
        self._snapshot_every = snapshot_every
        self._seed = seed
        self._registry = registry if registry is not None else SagaRegistry()
        self._spec_for = spec_for or _spec_for_submitted
        self._on_finish = on_finish
        self._prepare = prepare
        self._participants_intensity = participants_intensity
        self._participants_backoff = participants_backoff
        self._root_intensity = root_intensity
        self.node_id = node_id
        self._lease = float(lease)
        self._renew_every = renew_every
        self._store: Any = None  # the journal shared by nodes (cluster mode), while running
        self._member: ClusterMember | None = None
        self._remote = RemoteWaiters()
        self._rejoining = False
        self._suspended_ids: set[str] = set()  # suspended sagas (bounded by the poisoned ones)
        cluster_metrics = CLUSTER_METRICS if node_id is not None else ()
        self.metrics_counters = Metrics((*metric_names, *RUNTIME_METRICS, *cluster_metrics))
        self._metrics_endpoint = (
            None
            if metrics_port is None
            else MetricsEndpoint(
                self.metrics_counters,
                host=metrics_host,
                port=metrics_port,
                gauges={"sagas_in_flight": self._registry.in_flight},
            )
        )
        self._lock = threading.Lock()
        self._running = False
        self._failure: BaseException | None = None
        self._recovery = RuntimeRecovery()
        self._root: pykka.ActorRef[Any] | None = None
        self._journal: JournalWithSnapshots | None = None
        self._memory_journal: InMemoryJournal | None = None  # kept across stop() and start()
        self._addresses = {p.name: Address(p.name) for p in self._participants}
        self._timer_address = Address("timer")
        self._timer: Timer | None = None
        self._hosts = SagaHosts(f"{name}-host", hosts)
        self._links: dict[str, Recipient] = {}

    # --- lifecycle ---

    def __enter__(self) -> SagaRuntime:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> SagaRuntime:
        """Start the supervision tree; on an existing journal, resume the unfinished sagas.

        Raises what opening or recovering the journal raises (`JournalInUse`,
        `NotAJournal`, `JournalCorrupted`, OSError); nothing is left running then.
        """
        with self._lock:
            if self._running:
                return self
            self._failure = None
            self._suspended_ids.clear()  # a start resumes them
            self._registry.reset({}, None)
            try:
                if self._metrics_endpoint is not None:  # first: a busy port must leave nothing written
                    self._metrics_endpoint.start()
                journal = self._journal = self._open_journal()
                if self.node_id is not None:
                    journal = self._journal = self._join_cluster(journal)
                self._root = self._start_tree(journal)
                if self._prepare is not None:
                    self._prepare(journal)
                self._recovery = self._recover(journal)
                if self._member is not None:
                    self._member.start()
            except BaseException:
                if self._metrics_endpoint is not None:
                    self._metrics_endpoint.stop()
                self._stop_tree()
                member, self._member = self._member, None
                self._leave_cluster(member)  # its thread never started: nothing waits for the lock
                raise
            self._running = True
            _RUNNING.add(self)
            logger.info(
                "%s started%s%s",
                self.name,
                f" on {shown_journal(self._journal_arg)}" if self._journal_arg else "",
                f" as node {self.node_id}" if self.node_id is not None else "",
            )
            return self

    def stop(self) -> None:
        """Stop this runtime's actors (and only them), in the reverse of their start order.

        Sagas still in flight stay in the journal and are resumed by the
        next `start()`. Every caller still waiting gets `SystemNotRunning`.
        Call `wait_idle()` first to drain.
        """
        member = self._member
        if member is not None:
            member.request_stop()  # first: a rejoin under way gives up
        with self._lock:
            if self._metrics_endpoint is not None:  # kept after a failure, to be scraped
                self._metrics_endpoint.stop()
            was_running, self._running = self._running, False
            _RUNNING.discard(self)
            if was_running:
                self._stop_tree()
            self._member = None
        # Outside the lock: a lease thread rejoining waits for it, and gives up on seeing the stop.
        self._leave_cluster(member)
        if was_running:
            logger.info("%s stopped", self.name)

    @property
    def running(self) -> bool:
        """True between a successful `start()` and `stop()`, or until a failure stops the runtime."""
        return self._running

    @property
    def rejoining(self) -> bool:
        """True while a node that lost its lease has stopped its sagas and is acquiring a new lease
        (not `running` meanwhile: `submit` raises `SystemNotRunning`); it runs again after."""
        return self._rejoining

    @property
    def failure(self) -> BaseException | None:
        """Why the runtime stopped on its own (its root gave up restarting), or None."""
        return self._failure

    @property
    def journal(self) -> JournalWithSnapshots | None:
        """The journal while running (None before the first `start()`)."""
        return self._journal

    @property
    def timer(self) -> Timer | None:
        return self._timer

    def recovery(self) -> RuntimeRecovery:
        """What the last `start()` found in the journal."""
        return self._recovery

    # --- sagas ---

    def submit(self, saga_id: str, data: Any, ephemeral: Any = None) -> SagaFuture[SagaOutcome]:
        """Start a saga without waiting; the future gives its `SagaOutcome`.

        Idempotent by `saga_id`: while the saga runs, or once its end is in
        the journal, the same id with equal `data` gets that saga's outcome
        (it is not run twice); with other data the future raises
        `SagaConflict`. `data` is journaled (its type must be registered
        with the codec of a SQLite journal); `ephemeral` (secrets such as a
        card number) is held in memory only and never journaled - a saga
        recovered after a crash does not have it. Raises ValueError for an
        id that is not a non-empty string, `SerializationError` for data the
        journal's codec cannot store (register its types: `codec=`), and
        `SystemNotRunning` if the runtime is not running; nothing starts then.
        """
        check_saga_id(saga_id)
        if data is None:
            raise ValueError(f"saga {saga_id!r:.80}: data must not be None (a saga is started with its data)")
        self._check_running()
        codec = getattr(self._journal, "codec", None)
        if codec is not None:
            codec.encode(data)  # raises SerializationError: better here than in a crash loop
        registry = self._registry
        future: pykka.Future[SagaOutcome] = pykka.ThreadingFuture()
        result = SagaFuture(future, saga_id, self.describe)
        value = _Submitted(data, ephemeral)

        def same(running: Any) -> bool:
            if isinstance(running, _Submitted):
                return self._same_data(running.data, data)
            stored = self._replay(saga_id).data  # recovered at start: the journal holds its data
            return stored is None or self._same_data(stored, data)

        decision = registry.begin(saga_id, value, future, same)
        if decision == "conflict":
            answer(future, None, registry.conflict(saga_id))
        if decision != "new":
            return result
        if self._member is not None:
            self._submit_to_cluster(saga_id, data, ephemeral)
            if not self._running:
                registry.finished(saga_id, None, SystemNotRunning(f"{self.name} stopped"))
            return result
        try:
            state = self._replay(saga_id)
        except Exception as error:
            registry.finished(saga_id, None, error)
            return result
        if state.phase == "new":
            self._spawn(SagaSpec(saga_id, data, ephemeral, fresh=True, resume_forward=True))
        elif not self._same_data(state.data, data):
            registry.finished(saga_id, None, registry.conflict(saga_id))
        elif state.phase == "done":
            registry.finished(saga_id, SagaOutcome(saga_id, state.committed, state.reason))
        else:  # unfinished in the journal, yet not in flight here: carry it on
            self._spawn(SagaSpec(saga_id, data, ephemeral, resume_forward=True))
        if not self._running:  # stopped meanwhile: whatever stop() did not answer, answer now
            registry.finished(saga_id, None, SystemNotRunning(f"{self.name} stopped"))
        return result

    def _submit_to_cluster(self, saga_id: str, data: Any, ephemeral: Any) -> None:
        """Cluster mode (the caller's thread): journal the saga's start, which makes this node its
        owner cluster-wide, and run it here; if it was started before (here or on another node),
        wait for its outcome through the journal (or answer from it, or refuse other data)."""
        registry, journal = self._registry, self._journal
        assert journal is not None
        start = self._start_events(saga_id, data)
        unknown = False
        try:
            # One write, no read: the database lets one node win the stream's first sequence number.
            journal.append(saga_persistence_id(self.definition, saga_id), start, 0)
        except ConcurrencyError:
            pass  # started before: read on
        except LeaseLost as error:
            registry.finished(
                saga_id, None, SystemNotRunning(f"node {self.node_id} lost its lease ({error})")
            )
            return
        except Exception as error:  # the journal's connection failed: was it stored? The journal says
            shown = mask_digits(saga_id)
            logger.warning("[%s] its start may not be journaled (%s): reading on", shown, error)
            unknown = True
        else:
            self._spawn(SagaSpec(saga_id, data, ephemeral, resume_forward=True, journaled=len(start)))
            return
        try:
            state = self._replay(saga_id)
        except Exception as error:
            if unknown:  # still unreachable: the poll finds out, and the lease thread resumes it if stored
                self._await_elsewhere(saga_id, registry.abandon(saga_id))
            else:
                registry.finished(saga_id, None, error)
            return
        if unknown and state.phase == "new":  # it was not stored: nothing happened
            registry.finished(saga_id, None, SystemNotRunning(_not_started(saga_id)))
            return
        if not self._same_data(state.data, data):
            registry.finished(saga_id, None, registry.conflict(saga_id))
        elif state.phase == "done":
            registry.finished(saga_id, registry.outcome_of(_finished_of(saga_id, state)))
        elif self._owner(saga_id) == self.node_id:
            self._spawn(SagaSpec(saga_id, data, ephemeral, resume_forward=True))  # ours: carry it on
        else:  # another node runs it: its end will be in the journal
            self._await_elsewhere(saga_id, registry.abandon(saga_id))

    def _start_events(self, saga_id: str, data: Any) -> list[Any]:
        """What a saga's start journals (its data, and its first stage begun), as its host would."""
        events = decide(self.definition, SagaState(), Start(saga_id, data), self._retry, lambda: 0.0)
        return [event for event in events if is_durable(event)]

    def _await_elsewhere(self, saga_id: str, futures: list[pykka.Future[Any]]) -> None:
        member = self._member
        if member is None or not futures:
            return
        self.metrics_counters.increment("sagas_awaited_elsewhere")
        self._remote.add(saga_id, futures)
        member.poke(saga_id)  # it may have ended before this node listened

    def _owner(self, saga_id: str) -> str | None:
        store: LeaseStore = self._store
        return store.owner(saga_persistence_id(self.definition, saga_id))

    def run(
        self, saga_id: str, data: Any, ephemeral: Any = None, *, timeout: float | None = None
    ) -> SagaOutcome:
        """`submit` and wait: the saga's `SagaOutcome` (see `SagaFuture.get` for `timeout`)."""
        check_timeout(timeout)
        return self.submit(saga_id, data, ephemeral).get(timeout)

    def spawn(self, spec: SagaSpec) -> None:
        """Have a saga's host start `spec` without waiting (for applications that keep their own
        `registry`: the saga must be registered as running first). Safe from any thread,
        actors' included. If the host is restarting, it resumes the saga when it is back."""
        self._spawn(spec)

    def saga(self, saga_id: str) -> SagaView | None:
        """What a saga is doing (phase, steps pending), or None if it never began.

        Asks the saga while it runs; reads its journal stream once it has
        finished. Raises ValueError if `saga_id` is not a string.
        """
        check_saga_id(saga_id)
        self._check_running()
        if self._registry.is_running(saga_id):
            try:
                found = self._hosts.view(saga_id, VIEW_TIMEOUT)
            except (pykka.ActorDeadError, pykka.Timeout):
                found = None  # its host is restarting: read the journal
            if found is not None:
                return found
        if self._journal is None:
            return None
        state = self._replay(saga_id)
        return view(state) if state.phase != "new" else None

    def outcome(self, saga_id: str) -> SagaOutcome | None:
        """A finished saga's outcome from its journal stream; None if it never began or still runs.
        Raises ValueError for an id that is not a saga id."""
        check_saga_id(saga_id)
        self._check_running()
        state = self._replay(saga_id)
        if state.phase != "done":
            return None
        return SagaOutcome(saga_id, state.committed, state.reason)

    def in_flight(self) -> int:
        return self._registry.in_flight()

    def running_sagas(self) -> list[str]:
        """The ids of the sagas in flight, sorted."""
        return sorted(self._registry.running())

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no saga is in flight; False if some still are after `timeout` seconds
        (None waits as long as it takes)."""
        seconds = check_timeout(timeout)
        if seconds is None or seconds > _WAIT_SLICE:
            deadline = None if seconds is None or math.isinf(seconds) else time.monotonic() + seconds
            while not self._registry.wait_idle(_WAIT_SLICE):
                if deadline is not None and time.monotonic() >= deadline:
                    return False
            return True
        return self._registry.wait_idle(seconds)

    def metrics(self) -> dict[str, int]:
        """Counters since this object was made (retries, compensations, restarts, sagas_stuck,
        and the application's), plus the gauge `in_flight`."""
        counts = self.metrics_counters.snapshot()
        counts["in_flight"] = self._registry.in_flight()
        return counts

    def histograms(self) -> dict[str, list[HistogramData]]:
        """Latency histograms since this object was made, in seconds (see `Metrics.histograms`)."""
        return self.metrics_counters.histograms()

    @property
    def metrics_port(self) -> int | None:
        """The port the Prometheus endpoint listens on while serving, else None."""
        return None if self._metrics_endpoint is None else self._metrics_endpoint.port

    # --- participants, and fault drills ---

    def address(self, participant: str) -> Address:
        """The stable address of a registered participant (KeyError if there is none)."""
        return self._addresses[participant]

    def ask(self, participant: str, message: Any) -> Any:
        """Ask a participant (from a caller's thread, never an actor's); while it restarts, wait for
        its next incarnation, for at most 10 s. Raises ValueError for a name that is not a
        registered participant and `SystemNotRunning` if it does not come back. The
        participant answers in its own thread (a `ParticipantActor`: `on_other_message`)."""
        address = self._addresses.get(participant) if isinstance(participant, str) else None
        if address is None:
            raise ValueError(f"unknown participant {participant!r:.80}: one of {', '.join(self._addresses)}")
        return self._call(address, lambda a: a.ask(message, timeout=QUERY_TIMEOUT))

    def actor_names(self) -> list[str]:
        """The names `kill()` takes now: the participants, `timer`, and `saga:<saga_id>` per saga
        in flight; empty while the runtime is not running."""
        if not self._running:
            return []
        return [*self._addresses, "timer", *(f"saga:{i}" for i in sorted(self._registry.running()))]

    def kill(self, name: str) -> None:
        """Make one actor exit abnormally, as a crash would (for fault tests and drills).

        `name` is a participant's name, "timer" or "saga:<saga_id>" (see
        `actor_names()`). Its supervisor then does what it is configured to
        do: restart it (the timer's restart restarts the participants and
        sagas after it, `rest_for_one`). Raises ValueError for an unknown
        name and `SystemNotRunning` if the runtime is not running. A saga
        that has just finished is not an error: there is nothing to kill.
        """
        self._check_running()
        target = self._addresses.get(name) if isinstance(name, str) else None
        if name == "timer":
            target = self._timer_address
        if target is None and isinstance(name, str) and name.startswith("saga:"):
            saga_id = name[len("saga:") :]
            if self._registry.is_running(saga_id):
                logger.warning("killing %s (fault injection)", name)
                self._hosts.kill(saga_id, f"killed by kill({name!r})")
            return
        if target is None:
            shown = name[:80] if isinstance(name, str) else type(name).__name__
            raise ValueError(
                f"unknown actor {shown!r}: one of {', '.join([*self._addresses, 'timer'])} or saga:<saga_id>"
            )
        logger.warning("killing %s (fault injection)", name)
        kill(target, f"killed by kill({name!r})")

    # --- the supervision tree ---

    def _open_journal(self) -> JournalWithSnapshots:
        given = self._journal_arg
        if given is None:
            if self._memory_journal is None:
                self._memory_journal = InMemoryJournal()
            return self._memory_journal
        if is_postgres_url(given):
            from saga_actors.persistence.postgres import PostgresJournal  # the extra `postgres`

            assert isinstance(given, str)
            journal: JournalWithSnapshots = PostgresJournal(
                given, self._full_codec(), mode="node" if self.node_id is not None else "writer"
            )
            return journal
        if isinstance(given, (str, os.PathLike)):
            return SQLiteJournal(given, self._full_codec())
        return given

    # --- cluster mode ---

    def _join_cluster(self, store: JournalWithSnapshots) -> JournalWithSnapshots:
        """Acquire this node's lease (the caller's thread; waits while a previous incarnation's is
        live) and return the journal handle fenced by it."""
        assert self.node_id is not None
        self._store = store
        store.open()
        member = self._member = ClusterMember(
            cast(LeaseStore, store),
            self.node_id,
            lease=self._lease,
            renew_every=self._renew_every,
            prefix=saga_persistence_id(self.definition, ""),
            final_types=FINAL_EVENTS,
            on_lost=self._rejoin,
            on_taken=self._taken_over,
            check=self._check_awaited,
            reconcile=self._reconcile,
            name=self.name,
        )
        fence = member.acquire(self._lease + 5 * member.renew_every)
        if fence is None:
            raise SystemNotRunning(f"{self.name} stopped while acquiring its lease")
        return self._fenced(fence)

    def _fenced(self, fence: Fence) -> JournalWithSnapshots:
        store: LeaseStore = self._store
        return store.fenced(fence)

    def _leave_cluster(self, member: ClusterMember | None) -> None:
        """Stop the lease thread, let the lease expire now (others take over at once), fail the
        callers waiting for other nodes' sagas, close the shared journal. Not under self._lock
        (the lease thread may wait for it)."""
        if member is not None:
            member.request_stop()
            member.join(RECOVERY_TIMEOUT)
            member.release()
        for future in self._remote.pop_all():
            answer(future, None, SystemNotRunning(f"{self.name} stopped before the outcome was known"))
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def _rejoin(self) -> None:
        """The lease is lost (the lease thread): stop every saga held here, keep their callers
        waiting for their outcome through the journal, acquire a new lease and start again."""
        member = self._member
        if member is None:
            return
        with self._lock:
            if not self._running:
                return
            self._running, self._rejoining = False, True
            self.metrics_counters.increment("leases_lost")
            waiting = self._registry.abandon_all()
            self._stop_tree()
            for saga_id, futures in waiting.items():
                self._remote.add(saga_id, futures)
        logger.warning("%s: node %s stopped its sagas; acquiring a new lease", self.name, self.node_id)
        fence = None
        while fence is None and not member.stopping:
            try:
                fence = member.acquire(None)
            except Exception as error:  # the store is unreachable: try again, without a storm
                logger.warning("%s: node %s cannot acquire a lease yet: %s", self.name, self.node_id, error)
                member.wait_stopping(1.0)
        with self._lock:
            self._rejoining = False
            if fence is None or member.stopping:
                return
            try:
                journal = self._journal = self._fenced(fence)
                self._root = self._start_tree(journal)
                self._recovery = self._recover(journal)
            except Exception as error:  # give the lease up, so that other nodes take over
                logger.exception("%s: node %s could not start again", self.name, self.node_id)
                self._failure = error
                self._stop_tree()
                member.request_stop()
                member.release()
                return
            self._running = True
            _RUNNING.add(self)
            logger.warning(
                "%s: node %s running again at epoch %d (%d saga(s) of its own resumed)",
                self.name,
                self.node_id,
                fence.epoch,
                self._recovery.sagas_resumed,
            )
        member.poke("")  # check every awaited saga now

    def _taken_over(self, persistence_ids: list[str]) -> None:
        """This node took over a dead node's unfinished sagas (the lease thread): resume them as
        recovery does (roll forward after the commit decision, presumed abort before it)."""
        prefix = saga_persistence_id(self.definition, "")
        saga_ids = [p[len(prefix) :] for p in persistence_ids]
        with self._lock:
            if not self._running:
                return
            adopted = self._registry.adopt(saga_ids)
            self.metrics_counters.increment("sagas_taken_over", len(saga_ids))
            for saga_id in adopted:
                self._spawn(self._spec_for(saga_id, None, False))

    def _check_awaited(self, saga_ids: list[str] | None) -> None:
        """Answer the callers here whose saga (run by another node) has ended (the lease thread).
        `saga_ids`: those to check (None or "" among them: every one awaited)."""
        awaited = self._remote.ids()
        if saga_ids is not None and "" not in saga_ids:
            wanted = set(saga_ids)
            awaited = [saga_id for saga_id in awaited if saga_id in wanted]
        for saga_id in awaited:
            try:
                state = self._replay(saga_id)
            except Exception as error:  # the journal is unreachable now: the next poll tries again
                logger.debug("[%s] cannot read its outcome yet: %s", mask_digits(saga_id), error)
                return
            if state.phase == "done":
                outcome = self._registry.outcome_of(_finished_of(saga_id, state))
                for future in self._remote.pop(saga_id):
                    answer(future, outcome)
            elif state.phase == "new":  # its start never reached the journal: nothing happened
                never = SystemNotRunning(_not_started(saga_id))
                for future in self._remote.pop(saga_id):
                    answer(future, None, never)

    def _reconcile(self) -> None:
        """Resume the sagas this node owns, unfinished in the journal, that run nowhere here (the
        lease thread): one whose start was journaled although its append reported a failure (a
        connection lost during COMMIT). Resumed as recovery does. A suspended saga is left alone."""
        journal = self._journal
        if not self._running or journal is None:
            return
        prefix = saga_persistence_id(self.definition, "")
        owned = [p[len(prefix) :] for p in journal.open_persistence_ids(prefix, FINAL_EVENTS)]
        with self._lock:
            if not self.running:  # it may have stopped meanwhile
                return
            running = self._registry.running()
            orphans = [s for s in owned if s not in running and s not in self._suspended_ids]
            adopted = self._registry.adopt(orphans)
            for saga_id in adopted:
                self._spawn(self._spec_for(saga_id, None, False))
        if adopted:
            logger.warning("%s: resumed %d saga(s) of its own that ran nowhere", self.name, len(adopted))

    def _full_codec(self) -> EventCodec:
        codec = self._codec if self._codec is not None else EventCodec()
        for cls in DURABLE_EVENTS:
            if not codec.knows(cls.__name__):
                codec.register(cls)
        return codec

    def _start_tree(self, journal: JournalWithSnapshots) -> pykka.ActorRef[Any]:
        timer = self._timer = Timer(f"{self.name}-timer")
        options: dict[str, Any] = {
            "snapshot_every": self._snapshot_every,
            "retention": self._retention,
            "timer": timer,
            "in_flight_since": self._registry.in_flight_since,
            "timeout": RECOVERY_TIMEOUT,
        }
        children = []
        self._links = {}
        for participant in self._participants:
            address = self._addresses[participant.name]
            dice = FaultInjector(participant.faults, participant.name) if participant.faults else None
            context = ParticipantContext(
                participant.name, journal, timer, dice, self.metrics_counters, options
            )
            self._links[participant.name] = SimulatedLink(address, dice, timer) if dice else address
            children.append(
                ChildSpec(
                    participant.name, address=address, start=functools.partial(_start, participant, context)
                )
            )
        restarted = self._count_restart
        root_children = [
            ChildSpec("journal", lambda: ResourceActor.start("journal", journal.open, journal.close)),
            ChildSpec(
                "timer",
                address=self._timer_address,
                start=lambda: ResourceActor.start("timer", timer.start, timer.stop, watch=timer.set_on_died),
            ),
            *(
                ChildSpec(
                    r.name, functools.partial(ResourceActor.start, r.name, r.open, r.close, watch=r.watch)
                )
                for r in self._resources
            ),
            ChildSpec(
                "participants",
                lambda: start_supervisor(
                    name="participants",
                    children=children,
                    strategy=ONE_FOR_ONE,
                    intensity=self._participants_intensity,
                    backoff=self._participants_backoff,
                    on_restart=restarted,
                ),
            ),
            ChildSpec("sagas", self._start_sagas_supervisor),
        ]
        return start_supervisor(
            name=self.name,
            children=root_children,
            strategy=REST_FOR_ONE,
            intensity=self._root_intensity,
            backoff=ROOT_BACKOFF,
            on_restart=restarted,
            on_exit=self._root_exited,
        )

    def _start_sagas_supervisor(self) -> pykka.ActorRef[Any]:
        """The sagas subtree: a few threads, each hosting the sagas of one shard of saga ids.

        A host (re)started resumes every saga of its shard still in flight
        from the journal, so a restart of the subtree loses none.
        """
        specs = [
            ChildSpec(
                address.name, address=address, start=functools.partial(self._start_host, shard, address)
            )
            for shard, address in enumerate(self._hosts.addresses)
        ]
        return start_supervisor(
            name="sagas",
            children=specs,
            strategy=ONE_FOR_ONE,
            intensity=HOSTS_INTENSITY,
            backoff=HOSTS_BACKOFF,
            on_restart=self._count_restart,
        )

    def _start_host(self, shard: int, address: Address) -> pykka.ActorRef[Any]:
        assert self._journal is not None and self._timer is not None
        return SagaHost.start(
            definition=self.definition,
            journal=self._journal,
            participants=self._links,
            timer=self._timer,
            policy=self._retry,
            metrics=self.metrics_counters,
            on_finish=self._finished,
            address=address,
            shard=shard,
            shards=len(self._hosts),
            resume=self._in_flight_specs,
            on_restart=self._count_restart,
            on_suspend=self._suspended,
            intensity=SAGAS_INTENSITY,
            backoff=SAGAS_BACKOFF,
            seed=self._seed,
            # A request refused once older than half the retention can never act on an entry
            # its participant has forgotten (see sagas/retention.py). Not the attempt timeout:
            # a late answer still settles a step on a slow wire.
            request_deadline=self._retention / 2,
        )

    def _stop_tree(self) -> None:
        root, self._root = self._root, None
        if root is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                root.stop(block=True, timeout=RECOVERY_TIMEOUT)
        if self._journal is not None:
            self._journal.close()  # in case the tree never got to start it
        self._registry.reset({}, SystemNotRunning(f"{self.name} stopped before the outcome was known"))

    def _root_exited(self, urn: str, error: BaseException | None) -> None:
        """The root supervisor exited: by `stop()`, or by escalation (then the runtime is down)."""
        if error is None:
            return
        logger.critical("%s stopped after repeated failures: %s", self.name, error)
        self._failure = error
        self._running = False
        _RUNNING.discard(self)
        self._registry.reset({}, SystemNotRunning(f"{self.name} failed: {error}"))

    def _count_restart(self, child_id: str) -> None:
        self.metrics_counters.increment("restarts")

    # --- recovery and the sagas' lifecycle ---

    def _recover(self, journal: JournalWithSnapshots) -> RuntimeRecovery:
        """Resume every saga the journal shows unfinished."""
        prefix = saga_persistence_id(self.definition, "")
        unfinished: list[tuple[str, bool]] = []
        for persistence_id in journal.open_persistence_ids(prefix, FINAL_EVENTS):
            events = [stored.event for stored in journal.replay(persistence_id)]
            committed = any(isinstance(e, CommitDecided) for e in events)
            unfinished.append((persistence_id[len(prefix) :], committed))
        self._registry.reset(dict.fromkeys((saga_id for saga_id, _ in unfinished), None), None)
        for saga_id, _ in unfinished:
            self._spawn(self._spec_for(saga_id, None, False))
        report = RuntimeRecovery(
            sagas_resumed=len(unfinished),
            rolled_forward=sum(1 for _, committed in unfinished if committed),
            rolled_back=sum(1 for _, committed in unfinished if not committed),
        )
        if report.sagas_resumed:
            logger.info("%s recovery: %s", self.name, report)
        return report

    def _in_flight_specs(self) -> list[SagaSpec]:
        """Every saga in flight, to resume from the journal (a host picks those of its shard)."""
        return [self._spec_for(saga_id, value, False) for saga_id, value in self._registry.running().items()]

    def _spawn(self, spec: SagaSpec) -> None:
        try:
            self._hosts.start(spec)
        except pykka.ActorDeadError:
            logger.warning("[%s] saga host restarting: the saga starts with it", mask_digits(spec.saga_id))

    def _finished(self, finished: SagaFinished) -> None:
        """A saga's end is durable (a host's or the journal's thread): answer its callers."""
        registry = self._registry
        if registry.finished(finished.saga_id, registry.outcome_of(finished)) and self._on_finish is not None:
            self._on_finish(finished)
        member = self._member
        if member is not None:
            member.finished(finished.saga_id)  # other nodes may have callers waiting for it

    def _suspended(self, saga_id: str, error: BaseException) -> None:
        """A saga host gave up restarting a saga (its thread): its callers get `SagaFailed`, and it
        no longer counts as in flight here (the journal still has it: the next start resumes it)."""
        self._suspended_ids.add(saga_id)
        self._registry.finished(saga_id, None, SagaFailed(saga_id, error))

    def _replay(self, saga_id: str) -> SagaState:
        """The saga's state from its journal stream (one indexed read)."""
        journal = self._journal
        state = SagaState()
        if journal is None:
            return state
        for stored in journal.replay(saga_persistence_id(self.definition, saga_id)):
            state = evolve(self.definition, state, stored.event)
        return state

    def _same_data(self, a: Any, b: Any) -> bool:
        """Whether two sagas' data are the same (as the journal stores them: a list and a tuple
        with equal items are)."""
        if a == b:
            return True
        codec = self._codec
        if codec is None:
            return False
        try:
            return codec.encode(a) == codec.encode(b)
        except Exception:  # not storable: then only equality counts
            return False

    def describe(self, saga_id: str) -> str | None:
        """What a saga waits for, in words (its view's summary), for messages; None if that cannot
        be known now. Never raises."""
        try:
            saga = self.saga(saga_id)
        except Exception:  # the message is a courtesy: never fail the caller over it
            return None
        return saga.summary() if saga is not None else "it has not begun"

    def _check_running(self) -> None:
        if not self._running:
            raise SystemNotRunning(
                f"{self.name} failed: {self._failure}"
                if self._failure
                else f"{self.name} is not running; call start()"
            )

    def _call(self, address: Address, send: Callable[[Address], Any]) -> Any:
        """Run `send(address)`; while the target restarts, wait for its next incarnation.

        Runs in the caller's thread, for at most QUERY_TIMEOUT.
        """
        deadline = time.monotonic() + QUERY_TIMEOUT
        while True:
            self._check_running()
            try:
                return send(address)
            except pykka.ActorDeadError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SystemNotRunning(f"{self.name} is not answering ({address.name})") from None
                address.wait_for_incarnation(min(remaining, 0.1))


def is_postgres_url(journal: object) -> bool:
    """Whether a `journal` argument names a PostgreSQL database ("postgresql://..." or
    "postgres://...")."""
    return isinstance(journal, str) and journal.startswith(POSTGRES_SCHEMES)


def shown_journal(journal: object) -> str:
    """A journal argument for a log line: a URL without its password."""
    if is_postgres_url(journal):
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(str(journal))
        if parts.password is not None:
            host = parts.hostname or ""
            netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
            return urlunsplit(parts._replace(netloc=netloc, query=""))
        return urlunsplit(parts._replace(query=""))
    return str(journal)


def _not_started(saga_id: str) -> str:
    return (
        f"saga {mask_digits(saga_id)!r} was not started (its node lost its lease or the journal its "
        "connection first): nothing happened; submit it again"
    )


def _finished_of(saga_id: str, state: SagaState) -> SagaFinished:
    """A finished saga's end, as its journal stream holds it."""
    return SagaFinished(saga_id, state.committed, state.reason)


def _check_cluster(journal: object, node_id: object, lease: object, renew_every: object) -> list[str]:
    """Problems with the cluster arguments (empty list: fine)."""
    if node_id is None:
        return []
    problems = check_node_id(node_id) + check_lease_seconds(lease)
    if renew_every is not None:
        problems += check_lease_seconds(renew_every, "renew_every")
        if not problems and renew_every >= lease:  # type: ignore[operator]
            problems.append(f"renew_every ({renew_every} s) must be shorter than the lease ({lease} s)")
    if not (is_postgres_url(journal) or all(hasattr(journal, m) for m in ("acquire_lease", "fenced"))):
        problems.append(
            "node_id needs a journal shared by nodes: a PostgreSQL URL (postgresql://...) "
            f"or a LeaseStore, got {shown_journal(journal)[:60]!r}"
        )
    return problems


def _start_resource(resource: Resource) -> pykka.ActorRef[Any]:
    return ResourceActor.start(resource.name, resource.open, resource.close, watch=resource.watch)


def _start(participant: Participant, context: ParticipantContext) -> pykka.ActorRef[Any]:
    """Start one incarnation of a participant; a `start` that returns no actor is a clear error."""
    ref = participant.start(context)
    if not isinstance(ref, pykka.ActorRef):
        raise TypeError(
            f"participant {participant.name!r}: start(context) must return a pykka.ActorRef "
            f"(e.g. MyActor.start_recovered(...)), got {type(ref).__name__}"
        )
    return ref


def _spec_for_submitted(saga_id: str, value: Any, fresh: bool) -> SagaSpec:
    """A submitted saga restarts with its data (and secrets) while this process holds them and
    carries on; one recovered from the journal has neither: presumed abort before the commit."""
    if isinstance(value, _Submitted):
        return SagaSpec(saga_id, value.data, value.ephemeral, fresh=fresh, resume_forward=True)
    return SagaSpec(saga_id)


MAX_SAGA_ID = 1000  # characters: an id is a key in every stream name and log line


def check_saga_id(saga_id: object) -> None:
    """Raise ValueError unless `saga_id` is a non-empty string of at most 1000 characters that
    can be stored (no lone surrogates)."""
    if not isinstance(saga_id, str) or not 0 < len(saga_id) <= MAX_SAGA_ID:
        shown = saga_id[:60] if isinstance(saga_id, str) else type(saga_id).__name__
        raise ValueError(f"saga_id must be a string of 1 to {MAX_SAGA_ID} characters, got {shown!r}")
    try:
        saga_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"saga_id must be valid Unicode text, got {saga_id[:60]!r}") from None


def check_timeout(timeout: object) -> float | None:
    """None, or the timeout as seconds: a non-negative number (any huge one, or inf, waits as long
    as it takes: it comes back as inf). Raises ValueError for anything else."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ValueError(f"timeout must be a non-negative number of seconds or None, got {timeout!r:.40}")
    if isinstance(timeout, int):  # exact, however large: no float conversion to overflow
        if timeout < 0:
            raise ValueError(f"timeout must be a non-negative number of seconds or None, got {timeout}")
        return float(timeout) if timeout < FOREVER else math.inf
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}")
    return timeout if timeout < FOREVER else math.inf


def _check_resources(resources: object) -> list[str]:
    if not isinstance(resources, Sequence) or isinstance(resources, (str, bytes)):
        return [f"resources must be a sequence of Resource, got {type(resources).__name__}"]
    problems = [f"resources: {r!r:.60} is not a Resource" for r in resources if not isinstance(r, Resource)]
    names = [r.name for r in resources if isinstance(r, Resource)]
    taken = sorted({n for n in names if names.count(n) > 1 or n in _ROOT_CHILDREN})
    if taken:
        problems.append(f"resource names must be unique and not one of {list(_ROOT_CHILDREN)}: {taken}")
    return problems


def _check_arguments(
    definition: object,
    participants: object,
    journal: object,
    codec: object,
    retry: object,
    hosts: object,
    name: object,
) -> list[str]:
    problems = []
    if not isinstance(definition, SagaDefinition):
        problems.append(f"definition must be a SagaDefinition, got {type(definition).__name__}")
    names: list[str] = []
    if not isinstance(participants, Sequence) or isinstance(participants, (str, bytes)):
        problems.append(f"participants must be a sequence of Participant, got {type(participants).__name__}")
    else:
        for participant in participants:
            if not isinstance(participant, Participant):
                problems.append(f"participants: {participant!r:.60} is not a Participant")
            else:
                names.append(participant.name)
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"participant names must be unique: {duplicates}")
        if "timer" in names:
            problems.append("'timer' is reserved: name the participant otherwise")
    if isinstance(definition, SagaDefinition) and not problems:
        missing = sorted({s.participant for s in definition.all_steps()} - set(names))
        if missing:
            problems.append(f"saga {definition.name!r} names participants that are not registered: {missing}")
    journal_methods = ("open", "close", "append", "append_async", "replay", "flush", "load_snapshot")
    if journal is not None and not (
        (isinstance(journal, (str, os.PathLike)) and os.fspath(journal))
        or all(callable(getattr(journal, m, None)) for m in journal_methods)
    ):
        problems.append(
            "journal must be a non-empty path, None, or a journal with snapshots "
            f"({', '.join(journal_methods)}, ...), got {journal!r:.60}"
        )
    if codec is not None and not isinstance(codec, EventCodec):
        problems.append(f"codec must be an EventCodec, got {type(codec).__name__}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        problems.append(f"retry must be a RetryPolicy, got {type(retry).__name__}")
    if isinstance(hosts, bool) or not isinstance(hosts, int) or not 1 <= hosts <= 64:
        problems.append(f"hosts must be an integer from 1 to 64, got {hosts!r:.40}")
    if not isinstance(name, str) or not name:
        problems.append(f"name must be a non-empty string, got {name!r:.40}")
    return problems
