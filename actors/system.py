"""`OrderSystem`: the public, embeddable face of the order engine.

It builds the supervision tree and offers a small blocking API on top:

    order-system (rest_for_one)
    |-- journal      the journal's writer
    |-- timer        every delay: retries, timeouts, simulated latency
    |-- services (one_for_one)
    |   |-- inventory   simulated, behind a faulty wire
    |   |-- payment     simulated, behind a faulty wire
    |   `-- orders      the order service
    `-- sagas (one_for_one)
        `-- saga-host-0, saga-host-1   threads hosting one saga actor per order
                                       in flight (each a transient child of its host)

Everything talks through stable addresses, so a restarted actor is reached
where its predecessor was. The system stops only the actors it started,
never an embedding application's.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import pykka

from saga_actors.actors.codec import order_codec
from saga_actors.actors.consistency import Check, check_consistency
from saga_actors.actors.errors import SystemNotRunning, mask_digits
from saga_actors.actors.inventory import PERSISTENCE_ID as INVENTORY_ID
from saga_actors.actors.inventory import GetStock, InventoryActor, StockView, stock_command
from saga_actors.actors.order_saga import ORDER_SAGA, OrderSagaData
from saga_actors.actors.orders import (
    INTERRUPTED,
    GetOrder,
    GetOrders,
    GetSales,
    OrderPlaced,
    OrderService,
    OrderView,
    Outcomes,
    PlaceOrder,
    RecoverOrders,
)
from saga_actors.actors.payment import GetCaptures, GetPayments, PaymentActor, PaymentView
from saga_actors.actors.simulation import FaultInjector, FaultPlan, SimulatedLink
from saga_actors.actors.validation import OrderRequest, validate_order
from saga_actors.persistence.journal import InMemoryJournal, JournalWithSnapshots
from saga_actors.persistence.sqlite import SQLiteJournal
from saga_actors.sagas.engine import (
    FINAL_EVENTS,
    AbortDecided,
    CommitDecided,
    SagaAborted,
    SagaStarted,
    SagaState,
    SagaView,
    evolve,
    view,
)
from saga_actors.sagas.host import SagaFinished, SagaHost, SagaHosts, SagaSpec, saga_persistence_id
from saga_actors.sagas.metrics import HistogramData, Metrics
from saga_actors.sagas.policy import RetryPolicy, is_finite_number, show_parameter
from saga_actors.sagas.prometheus import DEFAULT_HOST, MetricsEndpoint
from saga_actors.supervision import (
    ONE_FOR_ONE,
    REST_FOR_ONE,
    Address,
    Backoff,
    ChildSpec,
    Intensity,
    ResourceActor,
    kill,
    start_supervisor,
)
from saga_actors.supervision.timer import Timer

__all__ = ["OrderFuture", "OrderSystem", "RecoveryReport", "SagaView"]

logger = logging.getLogger(__name__)

QUERY_TIMEOUT = 10.0  # seconds a view query may take (it waits out a service restart)
VIEW_TIMEOUT = 2.0  # seconds a saga may take to say what it is doing
RECOVERY_TIMEOUT = 600.0  # seconds an actor may take to replay its journal
DEFAULT_SNAPSHOT_EVERY = 1000  # events between snapshots of the long-lived actors
# Seconds a finished order, reservation or payment is remembered (a repeat gets its first
# answer, a late request is refused): idempotency keys are commonly kept for at least 24 h.
# It must exceed the longest a request can be delayed (on the wire, in a retry, in a queue).
DEFAULT_RETENTION = 24 * 3600

# Supervision defaults, and why:
# - services: the simulated services crash on purpose (FaultPlan.crash_rate)
#   and restart from a snapshot in time proportional to their state (a few ms
#   for a few thousand entries), so a busy, flaky service may restart a hundred
#   times a second and still make progress; the backoff
#   stays short (1-4 ms) because every caller is waiting. A child that cannot
#   start at all retries every ~4 ms and so passes 1000 restarts within 5 s:
#   that is a crash loop, and it escalates.
# - sagas: one transient child of its host per order in flight; a crash is a
#   bug, a restart is cheap (resume from the journal). 1000 in 10 s per host,
#   with backoff of at most 5 ms, tolerates a burst; a saga that always
#   crashes makes its host fail, and a host that fails 3 times in 30 s
#   escalates to the root.
# - root: a subtree that escalated is restarted from the journal twice at
#   most in 30 s; the third time the system stops with the error instead of
#   looping.
SERVICES_INTENSITY = Intensity(max_restarts=1000, within_seconds=5.0)
SERVICES_BACKOFF = Backoff(min_backoff=0.001, max_backoff=0.004, random_factor=0.1, reset_after=1.0)
SAGAS_INTENSITY = Intensity(max_restarts=1000, within_seconds=10.0)
SAGAS_BACKOFF = Backoff(min_backoff=0.001, max_backoff=0.005, random_factor=0.2, reset_after=1.0)
SAGA_HOSTS = 2  # threads hosting the sagas (each saga is an actor, not a thread)
SAGA_HOSTS_INTENSITY = Intensity(max_restarts=3, within_seconds=30.0)
SAGA_HOSTS_BACKOFF = Backoff(min_backoff=0.01, max_backoff=0.2, random_factor=0.2, reset_after=10.0)
ROOT_INTENSITY = Intensity(max_restarts=2, within_seconds=30.0)
ROOT_BACKOFF = Backoff(min_backoff=0.05, max_backoff=0.5, random_factor=0.2, reset_after=30.0)

METRIC_NAMES = (
    "orders_placed",
    "orders_confirmed",
    "orders_cancelled",
    "duplicates",
    "idempotency_conflicts",
    "retries",
    "compensations",
    "restarts",
    "sagas_stuck",
)
SERVICE_NAMES = ("orders", "inventory", "payment", "timer")
_FOREVER = 10**9  # seconds (~32 years): any timeout this long waits as long as it takes
_WAIT_SLICE = 60.0  # a caller's wait is cut in slices this long (threading refuses huge timeouts)

# Systems still running when the interpreter exits are stopped cleanly then
# (their actors run on daemon threads, so a program that forgets stop() exits).
_RUNNING: weakref.WeakSet[OrderSystem] = weakref.WeakSet()


@atexit.register
def _stop_running_systems() -> None:
    for system in list(_RUNNING):
        with contextlib.suppress(Exception):
            system.stop()


@dataclass(frozen=True)
class RecoveryReport:
    """What `start()` found in the journal."""

    sagas_resumed: int = 0
    rolled_forward: int = 0  # the commit decision was recorded: driven to the end
    rolled_back: int = 0  # no decision: presumed abort, compensated
    orders_never_started: int = 0  # journaled, but the saga never began: cancelled


class OrderFuture:
    """The outcome of one submitted order: `get()` gives True (confirmed) or False."""

    def __init__(
        self,
        future: pykka.Future[bool],
        order_id: str | None,
        describe: Callable[[str], str | None] | None = None,
    ) -> None:
        self._future = future
        self.order_id = order_id
        self._describe = describe

    def get(self, timeout: float | None = None) -> bool:
        """Wait for the outcome; raise TimeoutError if unknown after `timeout` seconds.

        `timeout` is in seconds; `None` (or any huge value, `inf` included)
        waits as long as it takes. Raises the request's error too
        (InvalidOrder, IdempotencyConflict), and SystemNotRunning if the
        system stops first. A timeout does not cancel the order: it carries
        on, and the TimeoutError says what it is waiting for.
        """
        seconds = _check_timeout(timeout)
        deadline = None if seconds is None or math.isinf(seconds) else time.monotonic() + seconds
        while True:
            remaining = _WAIT_SLICE if deadline is None else min(deadline - time.monotonic(), _WAIT_SLICE)
            try:
                return bool(self._future.get(timeout=max(remaining, 0.0)))
            except pykka.Timeout:
                if deadline is None or time.monotonic() < deadline:
                    continue
            waiting = self._describe(self.order_id) if self._describe and self.order_id else None
            raise TimeoutError(
                f"order {mask_digits(self.order_id or '')!r}: outcome not known after {timeout} s"
                + (f" ({waiting})" if waiting else "")
                + "; it carries on"
            ) from None


class OrderSystem:
    """An order engine: each order is a saga over inventory and payment.

    Use it as a context manager, or call `start()` and `stop()`. Every method
    is safe to call from any thread.

    metrics_port: serve the metrics in the Prometheus text format over HTTP
        on this port from `start()` to `stop()` (0: any free port, see
        `metrics_port` once started), on `metrics_host` (local only by
        default). Needs the optional extra `metrics`: without it, ImportError
        naming it; ValueError for a port outside [0, 65535].
    """

    def __init__(
        self,
        *,
        journal_path: str | os.PathLike[str] | None = None,
        stock: Mapping[int, int] | None = None,
        inventory_faults: FaultPlan | None = None,
        payment_faults: FaultPlan | None = None,
        retry: RetryPolicy | None = None,
        snapshot_every: int | None = DEFAULT_SNAPSHOT_EVERY,
        retention: float = DEFAULT_RETENTION,
        metrics_port: int | None = None,
        metrics_host: str = DEFAULT_HOST,
    ) -> None:
        _check_arguments(
            journal_path, stock, inventory_faults, payment_faults, retry, snapshot_every, retention
        )
        self._journal_path = journal_path
        self._stock = dict(stock or {})
        self._inventory_faults = inventory_faults or FaultPlan()
        self._payment_faults = payment_faults or FaultPlan()
        self._retry = retry or RetryPolicy()
        self._snapshot_every = snapshot_every
        self._retention = float(retention)
        self._lock = threading.Lock()
        self._running = False
        self._failure: BaseException | None = None
        self._recovery = RecoveryReport()
        self._metrics = Metrics(METRIC_NAMES)
        self._outcomes = Outcomes()
        self._metrics_endpoint = (
            None
            if metrics_port is None
            else MetricsEndpoint(
                self._metrics,
                host=metrics_host,
                port=metrics_port,
                gauges={"sagas_in_flight": self._outcomes.in_flight},
            )
        )
        self._root: pykka.ActorRef[Any] | None = None
        self._journal: JournalWithSnapshots | None = None
        self._memory_journal: InMemoryJournal | None = None  # kept across stop() and start()
        self._orders = Address("orders")
        self._inventory = Address("inventory")
        self._payment = Address("payment")
        self._timer_address = Address("timer")
        self._hosts = SagaHosts("saga-host", SAGA_HOSTS)

    # --- lifecycle ---

    def __enter__(self) -> OrderSystem:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> OrderSystem:
        """Start the supervision tree; on an existing journal, recover and resume sagas.

        If recovery fails (a corrupt journal, say) the error is raised and
        nothing is left running.
        """
        with self._lock:
            if self._running:
                return self
            self._failure = None
            self._outcomes.reset({}, None)
            try:
                journal = self._journal = self._open_journal()
                self._root = self._start_tree(journal)
                if self._stock and journal.highest_sequence_nr(INVENTORY_ID) == 0:
                    self._inventory.ask(stock_command(self._stock), timeout=QUERY_TIMEOUT)
                self._recovery = self._recover_sagas(journal)
                if self._metrics_endpoint is not None:
                    self._metrics_endpoint.start()
            except BaseException:
                self._stop_tree()
                raise
            self._running = True
            _RUNNING.add(self)
            logger.info("order system started%s", f" on {self._journal_path}" if self._journal_path else "")
            return self

    def stop(self) -> None:
        """Stop this system's actors (and only them), in the reverse of their start order.

        Orders still in flight stay in the journal (a SQLite file, or the
        in-memory journal this object keeps) and are resumed by the next
        start: rolled forward if their commit decision was journaled, else
        rolled back (presumed abort: the card is no longer in memory) and
        cancelled as `interrupted`. Every caller still waiting gets
        SystemNotRunning, and nothing is left running. Call `wait_idle()`
        first to drain.
        """
        with self._lock:
            if self._metrics_endpoint is not None:  # kept after a failure, to be scraped
                self._metrics_endpoint.stop()
            if not self._running:
                return
            self._running = False
            _RUNNING.discard(self)
            self._stop_tree()
            logger.info("order system stopped")

    # --- orders ---

    def submit(self, request: Any) -> OrderFuture:
        """Place an order without waiting; the future gives its outcome.

        The future raises InvalidOrder for a malformed request (nothing was
        sent) and IdempotencyConflict for a reused order id.
        """
        future: pykka.Future[bool] = pykka.ThreadingFuture()
        try:
            order = validate_order(request)
        except ValueError as invalid:
            future.set_exception(exc_info=(type(invalid), invalid, None))
            return OrderFuture(future, _order_id_of(request))
        self._check_running()
        message = PlaceOrder(order, future)
        # Registered before it is sent: if the order service dies with the
        # message in its mailbox, its next incarnation takes it again.
        self._outcomes.submit(message)
        try:
            self._orders.tell(message)
        except pykka.ActorDeadError:
            pass  # restarting: the next incarnation takes it from the registry
        if not self._running:  # stopped meanwhile: whatever stop() did not answer, answer now
            self._outcomes.settle(message, SystemNotRunning("the order system stopped"))
        return OrderFuture(future, order.order_id, self._describe)

    def place_order(self, request: Any, *, timeout: float | None = None) -> bool:
        """Place an order and wait: True once confirmed, False once rolled back.

        A meaningless `timeout` (negative, NaN, not a number) is refused with
        ValueError before anything is placed.
        """
        _check_timeout(timeout)
        return self.submit(request).get(timeout)

    def order(self, order_id: str) -> OrderView | None:
        """The order's view, or None if it was never placed: from memory within the retention
        window, else from its saga's stream in the journal (one indexed read). Raises
        ValueError if `order_id` is not a string."""
        _check_order_id(order_id)
        return cast("OrderView | None", self._ask(self._orders, GetOrder(order_id)))

    def orders(self) -> dict[str, OrderView]:
        """`{order_id: view}` of the orders in memory: in flight, or finished within the retention
        window (older ones are in the journal: `order(order_id)`)."""
        return cast("dict[str, OrderView]", self._ask(self._orders, GetOrders()))

    def inventory(self) -> dict[int, StockView]:
        return cast("dict[int, StockView]", self._ask(self._inventory, GetStock()))

    def payments(self) -> dict[str, PaymentView]:
        return cast("dict[str, PaymentView]", self._ask(self._payment, GetPayments()))

    @property
    def running(self) -> bool:
        """True between a successful `start()` and `stop()`, or until a failure stops the system."""
        return self._running

    def metrics(self) -> dict[str, int]:
        """Counters since this object was made, plus `in_flight` and `sagas_stuck` (gauges)."""
        counts = self._metrics.snapshot()
        counts["in_flight"] = self._outcomes.in_flight()
        return counts

    def histograms(self) -> dict[str, list[HistogramData]]:
        """Latency histograms since this object was made, in seconds: `saga_duration_seconds`
        (labels `outcome`) and `step_latency_seconds` (`participant`, `step`, `kind`), each a
        list of series with their count, sum and cumulative buckets (see `HistogramData`)."""
        return self._metrics.histograms()

    @property
    def metrics_port(self) -> int | None:
        """The port the metrics endpoint listens on (the one bound, if 0 was asked for), or None
        when it is not listening (not asked for, or not started)."""
        return None if self._metrics_endpoint is None else self._metrics_endpoint.port

    def saga(self, order_id: str) -> SagaView | None:
        """The order's saga: its phase and the steps still pending, or None if it never began.

        Asks the saga actor while it runs; reads its journal stream once it has finished.
        Raises ValueError if `order_id` is not a string.
        """
        _check_order_id(order_id)
        self._check_running()
        if self._outcomes.is_running(order_id):
            try:
                found = self._hosts.view(order_id, VIEW_TIMEOUT)
            except (pykka.ActorDeadError, pykka.Timeout):
                found = None  # its host is restarting: read the journal
            if found is not None:
                return found
        journal = self._journal
        if journal is None:
            return None
        state = SagaState()
        for stored in journal.replay(saga_persistence_id(ORDER_SAGA, order_id)):
            state = evolve(ORDER_SAGA, state, stored.event)
        return view(state) if state.phase != "new" else None

    def actor_names(self) -> list[str]:
        """The names `kill()` takes now: the services, the timer, and `saga:<order_id>` per saga
        running; empty while the system is not running."""
        if not self._running:
            return []
        sagas = [f"saga:{i}" for i in sorted(self._outcomes.running())]
        return [*SERVICE_NAMES, *sagas]

    def kill(self, name: str) -> None:
        """Make one actor exit abnormally, as a crash would (for fault tests and drills).

        `name` is "orders", "inventory", "payment", "timer" or "saga:<order_id>"
        (see `actor_names()`). Its supervisor then does what it is configured
        to do: restart it (the timer's restart restarts the services and
        sagas after it, `rest_for_one`). Raises ValueError for an unknown name
        and SystemNotRunning if the system is not running. A saga that has
        just finished is not an error: there is nothing left to kill.
        """
        self._check_running()
        targets = {
            "orders": self._orders,
            "inventory": self._inventory,
            "payment": self._payment,
            "timer": self._timer_address,
        }
        target = targets.get(name)
        if target is None and isinstance(name, str) and name.startswith("saga:"):
            saga_id = name[len("saga:") :]
            if self._outcomes.is_running(saga_id):
                logger.warning("killing %s (fault injection)", name)
                self._hosts.kill(saga_id, f"killed by OrderSystem.kill({name!r})")
            return
        if target is None:
            shown = mask_digits(name)[:80] if isinstance(name, str) else type(name).__name__
            raise ValueError(f"unknown actor {shown!r}: one of {', '.join(SERVICE_NAMES)} or saga:<order_id>")
        logger.warning("killing %s (fault injection)", name)
        kill(target, f"killed by OrderSystem.kill({name!r})")

    def check_consistency(self, initial_stock: Mapping[int, int] | None = None) -> list[Check]:
        """Run the consistency checks (meaningful once `wait_idle()` is true).

        `initial_stock` defaults to every unit the inventory ever received; it is
        checked like `OrderSystem(stock=...)` (ValueError naming each problem).
        Besides the invariants over the views, "no saga in flight" fails while
        any order is still being placed or run (it names what they wait for).
        """
        if initial_stock is not None and (problems := _stock_problems("initial_stock", initial_stock)):
            raise ValueError("invalid initial_stock: " + "; ".join(problems))
        checks = check_consistency(
            initial_stock,
            self.orders(),
            self.inventory(),
            self.payments(),
            sales=self._ask(self._orders, GetSales()),
            captures=self._ask(self._payment, GetCaptures()),
        )
        running = sorted(self._outcomes.running())
        waiting = []
        for order_id in running[:3]:
            saga = self.saga(order_id)
            waiting.append(f"{order_id}: {saga.summary() if saga else 'not begun'}")
        detail = "; ".join(waiting) + (f" (+{len(running) - 3} more)" if len(running) > 3 else "")
        in_flight = self._outcomes.in_flight()
        checks.append(Check("no saga in flight", in_flight == 0, detail if in_flight else ""))
        return checks

    def recovery(self) -> RecoveryReport:
        """What the last `start()` found in the journal."""
        return self._recovery

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no order is submitted, being placed or in flight; False if some still are
        after `timeout` seconds (None waits as long as it takes)."""
        seconds = _check_timeout(timeout)
        if seconds is None or seconds > _WAIT_SLICE:
            deadline = None if seconds is None or math.isinf(seconds) else time.monotonic() + seconds
            while not self._outcomes.wait_idle(_WAIT_SLICE):
                if deadline is not None and time.monotonic() >= deadline:
                    return False
            return True
        return self._outcomes.wait_idle(seconds)

    # --- the supervision tree ---

    def _start_tree(self, journal: JournalWithSnapshots) -> pykka.ActorRef[Any]:
        timer = Timer("order-system-timer")
        inventory_dice = FaultInjector(self._inventory_faults, "inventory")
        payment_dice = FaultInjector(self._payment_faults, "payment")
        self._participants = {
            "inventory": SimulatedLink(self._inventory, inventory_dice, timer),
            "payment": SimulatedLink(self._payment, payment_dice, timer),
            "orders": self._orders,
        }
        self._timer = timer
        self._seed = self._payment_faults.seed
        restarted = self._count_restart
        # What every service is started with (each restart replays its journal, within RECOVERY_TIMEOUT).
        options: dict[str, Any] = {
            "snapshot_every": self._snapshot_every,
            "retention": self._retention,
            "timer": timer,
            "in_flight_since": self._outcomes.in_flight_since,
            "timeout": RECOVERY_TIMEOUT,
        }
        services = [
            ChildSpec(
                "inventory",
                address=self._inventory,
                start=lambda: InventoryActor.start_recovered(journal, inventory_dice, **options),
            ),
            ChildSpec(
                "payment",
                address=self._payment,
                start=lambda: PaymentActor.start_recovered(journal, payment_dice, **options),
            ),
            ChildSpec(
                "orders",
                address=self._orders,
                start=lambda: OrderService.start_recovered(
                    journal,
                    start_saga=self._start_saga,
                    outcomes=self._outcomes,
                    metrics=self._metrics,
                    **options,
                ),
            ),
        ]
        root_children = [
            ChildSpec("journal", lambda: ResourceActor.start("journal", journal.open, journal.close)),
            ChildSpec(
                "timer",
                address=self._timer_address,
                start=lambda: ResourceActor.start("timer", timer.start, timer.stop, watch=timer.set_on_died),
            ),
            ChildSpec(
                "services",
                lambda: start_supervisor(
                    name="services",
                    children=services,
                    strategy=ONE_FOR_ONE,
                    intensity=SERVICES_INTENSITY,
                    backoff=SERVICES_BACKOFF,
                    on_restart=restarted,
                ),
            ),
            ChildSpec("sagas", self._start_sagas_supervisor),
        ]
        return start_supervisor(
            name="order-system",
            children=root_children,
            strategy=REST_FOR_ONE,
            intensity=ROOT_INTENSITY,
            backoff=ROOT_BACKOFF,
            on_restart=restarted,
            on_exit=self._root_exited,
        )

    def _stop_tree(self) -> None:
        root, self._root = self._root, None
        if root is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                root.stop(block=True, timeout=RECOVERY_TIMEOUT)
        if self._journal is not None:
            self._journal.close()  # in case the tree never got to start it
        self._outcomes.reset({}, SystemNotRunning("the order system stopped before the outcome was known"))

    def _root_exited(self, urn: str, error: BaseException | None) -> None:
        """The root supervisor exited: by `stop()`, or by escalation (then the system is down)."""
        if error is None:
            return
        logger.critical("order system stopped after repeated failures: %s", error)
        self._failure = error
        self._running = False
        _RUNNING.discard(self)
        self._outcomes.reset({}, SystemNotRunning(f"the order system failed: {error}"))

    def _count_restart(self, child_id: str) -> None:
        self._metrics.increment("restarts")

    def _open_journal(self) -> JournalWithSnapshots:
        if self._journal_path is None:
            if self._memory_journal is None:
                self._memory_journal = InMemoryJournal()
            return self._memory_journal
        return SQLiteJournal(self._journal_path, order_codec())

    # --- sagas ---

    def _recover_sagas(self, journal: JournalWithSnapshots) -> RecoveryReport:
        """Resume every saga the journal shows unfinished; cancel orders whose saga never began."""
        prefix = saga_persistence_id(ORDER_SAGA, "")
        unfinished: list[tuple[str, bool]] = []
        for persistence_id in journal.open_persistence_ids(prefix, FINAL_EVENTS):
            events = [stored.event for stored in journal.replay(persistence_id)]
            committed = any(isinstance(e, CommitDecided) for e in events)
            unfinished.append((persistence_id[len(prefix) :], committed))

        def saga_started(order_id: str) -> bool:  # runs in the order service's thread
            return journal.highest_sequence_nr(prefix + order_id) > 0

        never_started: list[OrderPlaced] = self._orders.ask(
            RecoverOrders(saga_started), timeout=RECOVERY_TIMEOUT
        )
        for placed in never_started:
            # Its saga never began and never will: its stream says so, so that past the
            # retention window the order is still answered (cancelled) from the journal.
            data = OrderSagaData.from_placed(placed)
            journal.append(
                prefix + placed.order_id,
                [
                    SagaStarted(placed.order_id, data),
                    AbortDecided(INTERRUPTED, None, ()),
                    SagaAborted(INTERRUPTED),
                ],
                0,
            )
        self._outcomes.reset(dict.fromkeys((saga_id for saga_id, _ in unfinished), None), None)
        for saga_id, _ in unfinished:
            self._spawn_saga(saga_id)
        report = RecoveryReport(
            sagas_resumed=len(unfinished),
            rolled_forward=sum(1 for _, committed in unfinished if committed),
            rolled_back=sum(1 for _, committed in unfinished if not committed),
            orders_never_started=len(never_started),
        )
        if report.sagas_resumed or report.orders_never_started:
            logger.info("recovery: %s", report)
        return report

    def _start_sagas_supervisor(self) -> pykka.ActorRef[Any]:
        """The sagas subtree: a few threads, each hosting the sagas of one shard of order ids.

        A host (re)started resumes every saga of its shard still in flight
        from the journal, so a restart of the subtree loses none.
        """
        hosts = self._hosts
        specs = [
            ChildSpec(
                address.name,
                address=address,
                start=functools.partial(self._start_host, shard, address),
            )
            for shard, address in enumerate(hosts.addresses)
        ]
        return start_supervisor(
            name="sagas",
            children=specs,
            strategy=ONE_FOR_ONE,
            intensity=SAGA_HOSTS_INTENSITY,
            backoff=SAGA_HOSTS_BACKOFF,
            on_restart=self._count_restart,
        )

    def _start_host(self, shard: int, address: Address) -> pykka.ActorRef[Any]:
        assert self._journal is not None
        return SagaHost.start(
            definition=ORDER_SAGA,
            journal=self._journal,
            participants=self._participants,
            timer=self._timer,
            policy=self._retry,
            metrics=self._metrics,
            on_finish=self._saga_finished,
            address=address,
            shard=shard,
            shards=len(self._hosts),
            resume=self._sagas_in_flight,
            on_restart=self._count_restart,
            intensity=SAGAS_INTENSITY,
            backoff=SAGAS_BACKOFF,
            seed=self._seed,
            # A request refused once older than half the retention can never act on
            # an entry its service has forgotten (see actors/retention.py). Not the
            # attempt timeout: a late answer still settles a step on a slow wire.
            request_deadline=self._retention / 2,
        )

    def _sagas_in_flight(self) -> list[SagaSpec]:
        """Every saga in flight, to resume from the journal (a host picks those of its shard)."""
        return [
            self._saga_spec(saga_id, order, fresh=False)
            for saga_id, order in self._outcomes.running().items()
        ]

    def _start_saga(self, order: OrderRequest) -> None:
        """Called in the journal's thread once a new order is durable."""
        self._spawn_saga(order.order_id, order)

    def _spawn_saga(self, saga_id: str, order: OrderRequest | None = None) -> None:
        """Have the saga's host start it, without waiting (callers are actors).

        If the host is down, its next incarnation resumes every saga of its
        shard in flight, this one included.
        """
        try:
            self._hosts.start(self._saga_spec(saga_id, order, fresh=order is not None))
        except pykka.ActorDeadError:
            logger.warning("[%s] saga host restarting: the saga starts with it", saga_id)

    @staticmethod
    def _saga_spec(saga_id: str, order: OrderRequest | None, *, fresh: bool) -> SagaSpec:
        """Given the order, the saga begins unless its journal shows it began (only its
        first start skips that read: `fresh`); this process still holds the order (and
        its card), so a restarted saga carries on. Without it (recovered at start):
        presumed abort."""
        if order is None:
            return SagaSpec(saga_id, log_context={"order_id": saga_id})
        return SagaSpec(
            saga_id,
            OrderSagaData.from_order(order),
            order.card,
            fresh=fresh,
            resume_forward=True,
            log_context={"order_id": saga_id},
        )

    def _saga_finished(self, finished: SagaFinished) -> None:
        """Called by a saga host, in its thread, once the saga's end is journaled: answer the callers."""
        if self._outcomes.finished(finished.saga_id, finished.committed):
            self._metrics.increment("orders_confirmed" if finished.committed else "orders_cancelled")

    def _describe(self, order_id: str) -> str | None:
        """What an order waits for, for a TimeoutError's message (best effort)."""
        try:
            saga = self.saga(order_id)
        except Exception:  # the message is a courtesy: never fail the caller over it
            return None
        return saga.summary() if saga is not None else "its saga has not begun"

    def _check_running(self) -> None:
        if not self._running:
            raise SystemNotRunning(
                f"the order system failed: {self._failure}"
                if self._failure
                else "the order system is not running; call start()"
            )

    # --- calling actors that may be restarting ---

    def _call(self, address: Address, send: Callable[[Address], Any]) -> Any:
        """Run `send(address)`; while the target restarts, wait for its next incarnation.

        Runs in the caller's thread, for at most QUERY_TIMEOUT.
        """
        deadline = time.monotonic() + QUERY_TIMEOUT
        while True:
            if not self._running:
                reason = (
                    f"the order system failed: {self._failure}"
                    if self._failure
                    else "the order system is not running; call start()"
                )
                raise SystemNotRunning(reason)
            try:
                return send(address)
            except pykka.ActorDeadError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SystemNotRunning(f"the order system is not answering ({address.name})") from None
                address.wait_for_incarnation(min(remaining, 0.1))

    def _ask(self, address: Address, message: Any) -> Any:
        return self._call(address, lambda a: a.ask(message, timeout=QUERY_TIMEOUT))


def _order_id_of(request: Any) -> str | None:
    """The order id of a request that failed validation, if it has a readable one."""
    try:
        order_id = request.get("order_id") if isinstance(request, dict) else None
    except Exception:  # a hostile key: the InvalidOrder already says what is wrong
        return None
    return str.__str__(order_id) if isinstance(order_id, str) else None


def _stock_problems(name: str, stock: object) -> list[str]:
    """What is wrong with a `{product_id: quantity}` mapping (empty if nothing)."""
    if not isinstance(stock, Mapping):
        return [f"{name} must be a mapping of product id to quantity, got {type(stock).__name__}"]
    problems = []
    for product_id, quantity in stock.items():
        if isinstance(product_id, bool) or not isinstance(product_id, int) or product_id < 0:
            problems.append(f"{name}: product id {product_id!r:.40} is not a non-negative integer")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
            problems.append(
                f"{name}[{product_id!r:.40}]: quantity {quantity!r:.40} is not a non-negative integer"
            )
    return problems


def _check_order_id(order_id: object) -> None:
    if not isinstance(order_id, str):
        raise ValueError(f"order_id must be a string, got {type(order_id).__name__}")


def _check_timeout(timeout: object) -> float | None:
    """None, or the timeout as seconds: a non-negative number (any huge one, or inf, waits as long
    as it takes: it comes back as inf). Raises ValueError for anything else."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ValueError(f"timeout must be a non-negative number of seconds or None, got {timeout!r:.40}")
    if isinstance(timeout, int):  # exact, however large: no float conversion to overflow
        if timeout < 0:
            raise ValueError(f"timeout must be a non-negative number of seconds or None, got {timeout}")
        return float(timeout) if timeout < _FOREVER else math.inf
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}")
    return timeout if timeout < _FOREVER else math.inf


def _check_arguments(
    journal_path: object,
    stock: object,
    inventory_faults: object,
    payment_faults: object,
    retry: object,
    snapshot_every: object,
    retention: object,
) -> None:
    """Check arguments that an untyped caller may get wrong; raise ValueError naming each problem."""
    problems = []
    if journal_path is not None and not (
        isinstance(journal_path, (str, os.PathLike)) and os.fspath(journal_path)
    ):
        problems.append(f"journal_path must be a non-empty path or None, got {journal_path!r:.60}")
    if snapshot_every is not None and (
        isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1
    ):
        problems.append(f"snapshot_every must be a positive integer or None, got {snapshot_every!r}")
    if not (is_finite_number(retention) and 0 < retention < _FOREVER):  # type: ignore[operator]
        problems.append(
            "retention must be a positive number of seconds below 10**9 (about 32 years), "
            f"got {show_parameter(retention)}"
        )
    if stock is not None:
        problems += _stock_problems("stock", stock)
    for name, value in (("inventory_faults", inventory_faults), ("payment_faults", payment_faults)):
        if value is not None and not isinstance(value, FaultPlan):
            problems.append(f"{name} must be a FaultPlan, got {type(value).__name__}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        problems.append(f"retry must be a RetryPolicy, got {type(retry).__name__}")
    if problems:
        raise ValueError("invalid OrderSystem arguments: " + "; ".join(problems))
