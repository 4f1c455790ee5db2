"""`OrderSystem`: the public, embeddable face of the order engine.

One application of `sagas.runtime.SagaRuntime`: the order saga over three
participants, with its supervision tree::

    order-system (rest_for_one)
    |-- journal      the journal's writer
    |-- timer        every delay: retries, timeouts, simulated latency
    |-- order-system-http   with service URLs: the HTTP client (one event loop thread)
    |-- participants (one_for_one)
    |   |-- inventory   simulated, behind a faulty wire; or a remote service (an HTTP proxy)
    |   |-- payment     simulated, behind a faulty wire; or a remote service (an HTTP proxy)
    |   `-- orders      the order service (the front door, and the saga's third participant)
    `-- sagas (one_for_one)
        `-- order-system-host-0, -1   threads hosting one saga actor per order
                                      in flight (each a transient child of its host)

Cluster mode (`node_id=...` on a PostgreSQL journal, the services given as
URLs): several OrderSystems (nodes) share the journal and the services, and
any node accepts any order. Each order's saga stream is its record there:
an order is placed by journaling its saga's start (one node wins an order
id cluster-wide), and `orders` is a participant without state that answers
the saga's confirm and cancel at once (the stream holds the decision).

What is the order system's own: validating a request, the order service
(one order per order id, its retention window and totals), the callers
waiting for orders (`Outcomes`), the orders whose saga never began, and the
views. Everything else - the tree, the journal, recovery of the sagas,
`kill`, queries that wait out a restart - is the runtime's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import pykka

from saga_actors.actors.codec import order_codec
from saga_actors.actors.consistency import Check, check_consistency
from saga_actors.actors.errors import IdempotencyConflict, SystemNotRunning, mask_digits
from saga_actors.actors.inventory import PERSISTENCE_ID as INVENTORY_ID
from saga_actors.actors.inventory import GetStock, InventoryActor, StockView, stock_command
from saga_actors.actors.order_saga import ORDER_SAGA, OrderSagaData, journaled_order
from saga_actors.actors.orders import (
    INTERRUPTED,
    GetOrder,
    GetOrders,
    GetSales,
    JournaledOrder,
    OrderPlaced,
    OrderService,
    OrderView,
    Outcomes,
    PlaceOrder,
    RecoverOrders,
    StreamOrders,
    sales_of,
)
from saga_actors.actors.payment import CapturesView, GetCaptures, GetPayments, PaymentActor, PaymentView
from saga_actors.actors.remote import RemoteServices, resolve_token, token_problems, url_problems
from saga_actors.actors.validation import OrderRequest, validate_order
from saga_actors.persistence.journal import JournalWithSnapshots
from saga_actors.sagas.cluster import DEFAULT_LEASE
from saga_actors.sagas.engine import AbortDecided, SagaAborted, SagaStarted, SagaView
from saga_actors.sagas.host import SagaFinished, SagaSpec, saga_persistence_id
from saga_actors.sagas.metrics import HistogramData
from saga_actors.sagas.policy import RetryPolicy, is_finite_number, show_parameter
from saga_actors.sagas.prometheus import DEFAULT_HOST
from saga_actors.sagas.runtime import (
    DEFAULT_RETENTION,
    DEFAULT_SNAPSHOT_EVERY,
    FOREVER,
    PARTICIPANTS_BACKOFF,
    RECOVERY_TIMEOUT,
    Participant,
    ParticipantContext,
    SagaFuture,
    SagaRegistry,
    SagaRuntime,
    check_timeout,
    is_postgres_url,
    shown_journal,
)
from saga_actors.sagas.simulation import FaultPlan
from saga_actors.supervision import Intensity

__all__ = ["DEFAULT_RETENTION", "OrderFuture", "OrderSystem", "RecoveryReport", "SagaView"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Supervision, and why (the runtime's defaults, restated where the order system sets its own):
# - participants: the simulated services crash on purpose (FaultPlan.crash_rate)
#   and restart from a snapshot in time proportional to their state (a few ms
#   for a few thousand entries), so a busy, flaky service may restart a hundred
#   times a second and still make progress; the backoff stays short (1-4 ms)
#   because every caller is waiting. A child that cannot start at all retries
#   every ~4 ms and so passes 1000 restarts within 5 s: that is a crash loop,
#   and it escalates.
# - sagas: one transient child of its host per order in flight; a crash is a
#   bug, a restart is cheap (resume from the journal). 1000 in 10 s per host
#   tolerates a burst; a host that fails 3 times in 30 s escalates to the root.
# - root: a subtree that escalated is restarted from the journal twice at
#   most in 30 s; the third time the system stops with the error instead of
#   looping.
SERVICES_INTENSITY = Intensity(max_restarts=1000, within_seconds=5.0)
ROOT_INTENSITY = Intensity(max_restarts=2, within_seconds=30.0)
SAGA_HOSTS = 2  # threads hosting the sagas (each saga is an actor, not a thread)

METRIC_NAMES = (
    "orders_placed",
    "orders_confirmed",
    "orders_cancelled",
    "duplicates",
    "idempotency_conflicts",
)
SERVICE_NAMES = ("orders", "inventory", "payment", "timer")


@dataclass(frozen=True)
class RecoveryReport:
    """What `start()` found in the journal."""

    sagas_resumed: int = 0
    rolled_forward: int = 0  # the commit decision was recorded: driven to the end
    rolled_back: int = 0  # no decision: presumed abort, compensated
    orders_never_started: int = 0  # journaled, but the saga never began: cancelled


class OrderFuture(SagaFuture[bool]):
    """The outcome of one submitted order: `get()` gives True (confirmed) or False.

    `get(timeout)` raises the request's error too (InvalidOrder,
    IdempotencyConflict), SystemNotRunning if the system stops first, and
    TimeoutError (the order carries on) - see `SagaFuture.get`.
    """

    noun = "order"

    @property
    def order_id(self) -> str | None:
        return self.saga_id

    def get(self, timeout: float | None = None) -> bool:
        return bool(super().get(timeout))

    def _shown_id(self) -> str:
        return mask_digits(self.saga_id or "")  # an order id may hold a card number


class OrderSystem:
    """An order engine: each order is a saga over inventory and payment.

    Use it as a context manager, or call `start()` and `stop()`. Every method
    is safe to call from any thread (but an actor's: they block).

    journal: where the orders are journaled: a SQLite file path, a
        PostgreSQL URL ("postgresql://..."; needs the extra `postgres`), or
        None (in memory, kept across `stop()` and `start()` of this object);
        for a node of a cluster, a `LeaseStore` object too (tests).
        `journal_path` is its older name.
    node_id, lease: run as this node of a cluster (see the module
        docstring): `journal` must be a PostgreSQL URL (or a `LeaseStore`),
        and `inventory` and `payment` URLs of the shared services. `lease`
        is in seconds (a dead node's orders are taken over within about
        `lease * 4 / 3`). ValueError names each problem.

    metrics_port: serve the metrics in the Prometheus text format over HTTP
        on this port from `start()` to `stop()` (0: any free port, see
        `metrics_port` once started), on `metrics_host` (local only by
        default). Needs the optional extra `metrics`: without it, ImportError
        naming it; ValueError for a port outside [0, 65535].
    inventory, payment: the base URL of a service that speaks the wire
        protocol (`actors.wire`), e.g. "http://127.0.0.1:8081": that
        participant is then a remote service instead of the simulated one
        (its stock and faults belong to the service: `stock=` or its
        `*_faults` with its URL is a ValueError). `service_token` (default:
        the environment variable SAGA_ACTORS_TOKEN) is sent to the services
        as `Authorization: Bearer <token>`. Needs the optional extra `http`
        (ImportError naming it). None: in-process, as without them.
    """

    def __init__(
        self,
        *,
        journal: str | os.PathLike[str] | JournalWithSnapshots | None = None,
        journal_path: str | os.PathLike[str] | None = None,
        stock: Mapping[int, int] | None = None,
        inventory_faults: FaultPlan | None = None,
        payment_faults: FaultPlan | None = None,
        retry: RetryPolicy | None = None,
        snapshot_every: int | None = DEFAULT_SNAPSHOT_EVERY,
        retention: float = DEFAULT_RETENTION,
        metrics_port: int | None = None,
        metrics_host: str = DEFAULT_HOST,
        inventory: str | None = None,
        payment: str | None = None,
        service_token: str | None = None,
        node_id: str | None = None,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        if journal is not None and journal_path is not None:
            raise ValueError(
                "invalid OrderSystem arguments: give journal or journal_path (its older name), not both"
            )
        given = journal if journal is not None else journal_path
        _check_arguments(given, stock, inventory_faults, payment_faults, retry, snapshot_every, retention)
        urls = _check_services(inventory, payment, service_token, stock, inventory_faults, payment_faults)
        if node_id is not None:
            problems = []
            if set(urls) != {"inventory", "payment"}:
                problems.append(
                    "a node of a cluster (node_id) calls shared services: give inventory and payment as URLs"
                )
            if not (is_postgres_url(given) or hasattr(given, "fenced")):
                problems.append("a node of a cluster (node_id) needs a PostgreSQL journal (postgresql://...)")
            if problems:
                raise ValueError("invalid OrderSystem arguments: " + "; ".join(problems))
        self._cluster = node_id is not None
        self._journal_path = given
        self._stock = dict(stock or {})
        self._outcomes = Outcomes()
        self._never_started = 0
        payment_faults = payment_faults or FaultPlan()
        # With URLs: remote participants, abandoning an HTTP call after twice the attempt
        # timeout, so that an answer that comes after the saga has sent a retry still settles
        # its step (any attempt's answer is the step's), without holding connections forever.
        self._remote = (
            RemoteServices(
                urls,
                resolve_token(service_token) or "",
                call_timeout=2 * (retry or RetryPolicy()).attempt_timeout,
            )
            if urls
            else None
        )
        local = {
            "inventory": Participant(
                "inventory",
                lambda c: InventoryActor.start_recovered(c.journal, c.faults, **c.options),
                inventory_faults or FaultPlan(),
            ),
            "payment": Participant(
                "payment",
                lambda c: PaymentActor.start_recovered(c.journal, c.faults, **c.options),
                payment_faults,
            ),
        }
        remote = self._remote
        cluster: dict[str, Any] = {}
        if node_id is not None:
            cluster = {"node_id": node_id, "lease": lease, "registry": NodeOutcomes()}
        self._runtime = SagaRuntime(
            ORDER_SAGA,
            participants=[
                *(remote.participant(n) if remote and n in remote.urls else local[n] for n in local),
                Participant(
                    "orders", StreamOrders.start if node_id is not None else self._start_order_service
                ),
            ],
            journal=given,
            codec=order_codec(),
            retry=retry,
            retention=float(retention),
            snapshot_every=snapshot_every,
            hosts=SAGA_HOSTS,
            seed=payment_faults.seed,
            name="order-system" if node_id is None else f"order-node-{node_id}",
            registry=cluster.pop("registry", self._outcomes),
            spec_for=None if node_id is not None else self._saga_spec,
            on_finish=self._saga_finished,
            prepare=None if node_id is not None else self._prepare,
            **cluster,
            metric_names=METRIC_NAMES,
            participants_intensity=SERVICES_INTENSITY,
            participants_backoff=PARTICIPANTS_BACKOFF,
            root_intensity=ROOT_INTENSITY,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            resources=[remote.resource()] if remote else [],
        )
        self._metrics = self._runtime.metrics_counters
        self._orders = self._runtime.address("orders")
        self._inventory = self._runtime.address("inventory")
        self._payment = self._runtime.address("payment")

    @property
    def runtime(self) -> SagaRuntime:
        """The saga runtime this system is an application of."""
        return self._runtime

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
        self._runtime.start()
        if self._runtime.running:
            shown = f" on {shown_journal(self._journal_path)}" if self._journal_path else ""
            logger.info("order system started%s", shown)
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
        self._runtime.stop()

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
        if self._cluster:
            placed = self._runtime.submit(order.order_id, OrderSagaData.from_order(order), order.card)
            # NodeOutcomes answers with a bool, not a SagaOutcome.
            answered = cast("pykka.Future[bool]", placed.future)
            return OrderFuture(answered, order.order_id, self._runtime.describe)
        message = PlaceOrder(order, future)
        # Registered before it is sent: if the order service dies with the
        # message in its mailbox, its next incarnation takes it again.
        self._outcomes.submit(message)
        try:
            self._orders.tell(message)
        except pykka.ActorDeadError:
            pass  # restarting: the next incarnation takes it from the registry
        if not self._runtime.running:  # stopped meanwhile: whatever stop() did not answer, answer now
            self._outcomes.settle(message, SystemNotRunning("the order system stopped"))
        return OrderFuture(future, order.order_id, self._runtime.describe)

    def place_order(self, request: Any, *, timeout: float | None = None) -> bool:
        """Place an order and wait: True once confirmed, False once rolled back.

        A meaningless `timeout` (negative, NaN, not a number) is refused with
        ValueError before anything is placed.
        """
        check_timeout(timeout)
        return self.submit(request).get(timeout)

    def order(self, order_id: str) -> OrderView | None:
        """The order's view, or None if it was never placed: from memory within the retention
        window, else from its saga's stream in the journal (one indexed read). Raises
        ValueError if `order_id` is not a string."""
        _check_order_id(order_id)
        if self._cluster:
            self._check_running()
            journaled = journaled_order(self._journal(), order_id)
            return journaled.view if journaled is not None else None
        return cast("OrderView | None", self._ask("orders", GetOrder(order_id)))

    def orders(self) -> dict[str, OrderView]:
        """`{order_id: view}` of the orders in memory: in flight, or finished within the retention
        window (older ones are in the journal: `order(order_id)`). A node of a cluster: the
        orders in flight on this node."""
        if self._cluster:
            self._check_running()
            return self._journaled_orders(self._runtime.running_sagas())
        return cast("dict[str, OrderView]", self._ask("orders", GetOrders()))

    def _journal(self) -> JournalWithSnapshots:
        journal = self._runtime.journal
        if journal is None:
            raise SystemNotRunning("the order system is not running; call start()")
        return journal

    def _journaled_orders(self, order_ids: list[str]) -> dict[str, OrderView]:
        return {order_id: j.view for order_id, j in self._journaled(order_ids).items()}

    def _journaled(self, order_ids: list[str]) -> dict[str, JournaledOrder]:
        journal = self._journal()
        found = {order_id: journaled_order(journal, order_id) for order_id in order_ids}
        return {order_id: j for order_id, j in found.items() if j is not None}

    def inventory(self) -> dict[int, StockView]:
        """`{product_id: view}` (from the inventory service over HTTP when it is remote: then
        `RemoteServiceError` if it does not answer within 10 s or answers with an error)."""
        if self._remote_has("inventory"):
            return self._remote_call(lambda remote: remote.stock())
        return cast("dict[int, StockView]", self._ask("inventory", GetStock()))

    def restock(self, stock: Mapping[int, int]) -> None:
        """Add on-hand units, `{product_id: units}` (a delivery; a product not stocked before
        joins the catalogue). Journaled as one event before it returns; `inventory()` shows
        it and `.received` counts it. Runs in the caller's thread, for at most a few seconds.

        Raises ValueError naming each problem (a product id or a quantity that is not a
        non-negative integer) before anything changes, and SystemNotRunning if the system
        is not running.
        """
        if problems := _stock_problems("stock", stock):
            raise ValueError("invalid restock: " + "; ".join(problems))
        if self._remote_has("inventory"):  # one POST, not retried (a restock has no idempotency key)
            self._remote_call(lambda remote: remote.restock(stock_command(stock)))
            return
        self._ask("inventory", stock_command(stock))

    def payments(self) -> dict[str, PaymentView]:
        """`{order_id: view}` (from the payment service over HTTP when it is remote: then
        `RemoteServiceError` if it does not answer within 10 s or answers with an error)."""
        if self._remote_has("payment"):
            return self._remote_call(lambda remote: remote.payments())
        return cast("dict[str, PaymentView]", self._ask("payment", GetPayments()))

    def _captures(self) -> CapturesView:
        if self._remote_has("payment"):
            return self._remote_call(lambda remote: remote.captures())
        return cast(CapturesView, self._ask("payment", GetCaptures()))

    @property
    def running(self) -> bool:
        """True between a successful `start()` and `stop()`, or until a failure stops the system."""
        return self._runtime.running

    def metrics(self) -> dict[str, int]:
        """Counters since this object was made, plus `in_flight` and `sagas_stuck` (gauges)."""
        return self._runtime.metrics()

    def histograms(self) -> dict[str, list[HistogramData]]:
        """Latency histograms since this object was made, in seconds: `saga_duration_seconds`
        (labels `outcome`) and `step_latency_seconds` (`participant`, `step`, `kind`), each a
        list of series with their count, sum and cumulative buckets (see `HistogramData`)."""
        return self._metrics.histograms()

    @property
    def metrics_port(self) -> int | None:
        """The port the metrics endpoint listens on (the one bound, if 0 was asked for), or None
        when it is not listening (not asked for, or not started)."""
        return self._runtime.metrics_port

    def saga(self, order_id: str) -> SagaView | None:
        """The order's saga: its phase and the steps still pending, or None if it never began.

        Asks the saga actor while it runs; reads its journal stream once it has finished.
        Raises ValueError if `order_id` is not a string.
        """
        _check_order_id(order_id)
        self._check_running()
        return self._runtime.saga(order_id)

    def actor_names(self) -> list[str]:
        """The names `kill()` takes now: the services, the timer, and `saga:<order_id>` per saga
        running; empty while the system is not running."""
        if not self.running:
            return []
        return [*SERVICE_NAMES, *(f"saga:{i}" for i in self._runtime.running_sagas())]

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
        try:
            self._runtime.kill(name)
        except ValueError:
            shown = mask_digits(name)[:80] if isinstance(name, str) else type(name).__name__
            raise ValueError(
                f"unknown actor {shown!r}: one of {', '.join(SERVICE_NAMES)} or saga:<order_id>"
            ) from None

    def check_consistency(self, initial_stock: Mapping[int, int] | None = None) -> list[Check]:
        """Run the consistency checks (meaningful once `wait_idle()` is true).

        `initial_stock` defaults to every unit the inventory ever received; it is
        checked like `OrderSystem(stock=...)` (ValueError naming each problem).
        Besides the invariants over the views, "no saga in flight" fails while
        any order is still being placed or run (it names what they wait for).
        """
        if initial_stock is not None and (problems := _stock_problems("initial_stock", initial_stock)):
            raise ValueError("invalid initial_stock: " + "; ".join(problems))
        if self._cluster:  # every order of the cluster, from the journal
            prefix = saga_persistence_id(ORDER_SAGA, "")
            ids = [p[len(prefix) :] for p in self._journal().persistence_ids(prefix)]
            journaled = self._journaled(ids)
            orders = {order_id: j.view for order_id, j in journaled.items()}
            sales = sales_of(journaled.values())
        else:
            orders, sales = self.orders(), self._ask("orders", GetSales())
        checks = check_consistency(
            initial_stock,
            orders,
            self.inventory(),
            self.payments(),
            sales=sales,
            captures=self._captures(),
        )
        running = self._runtime.running_sagas()
        waiting = []
        for order_id in running[:3]:
            saga = self.saga(order_id)
            waiting.append(f"{order_id}: {saga.summary() if saga else 'not begun'}")
        detail = "; ".join(waiting) + (f" (+{len(running) - 3} more)" if len(running) > 3 else "")
        in_flight = self._runtime.in_flight()
        checks.append(Check("no saga in flight", in_flight == 0, detail if in_flight else ""))
        return checks

    def recovery(self) -> RecoveryReport:
        """What the last `start()` found in the journal."""
        found = self._runtime.recovery()
        return RecoveryReport(
            found.sagas_resumed, found.rolled_forward, found.rolled_back, self._never_started
        )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no order is submitted, being placed or in flight; False if some still are
        after `timeout` seconds (None waits as long as it takes)."""
        return self._runtime.wait_idle(timeout)

    # --- what the runtime calls ---

    def _start_order_service(self, context: ParticipantContext) -> pykka.ActorRef[Any]:
        """One incarnation of the order service (in the participants' supervisor's thread)."""
        return OrderService.start_recovered(
            context.journal,
            start_saga=self._start_saga,
            outcomes=self._outcomes,
            metrics=context.metrics,
            **context.options,
        )

    def _prepare(self, journal: JournalWithSnapshots) -> None:
        """At start, before the sagas resume (the caller's thread): stock a new inventory, and
        cancel the orders whose saga never began."""
        if self._stock and journal.highest_sequence_nr(INVENTORY_ID) == 0:
            self._inventory.ask(stock_command(self._stock), timeout=RECOVERY_TIMEOUT)
        prefix = saga_persistence_id(ORDER_SAGA, "")

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
        self._never_started = len(never_started)
        if never_started:
            logger.info("recovery: %d order(s) whose saga never began cancelled", len(never_started))

    def _start_saga(self, order: OrderRequest) -> None:
        """Called in the journal's thread once a new order is durable."""
        self._runtime.spawn(self._saga_spec(order.order_id, order, True))

    @staticmethod
    def _saga_spec(saga_id: str, order: OrderRequest | None, fresh: bool) -> SagaSpec:
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
        """Called once an order's saga's end is durable (a saga host's or the journal's thread)."""
        self._metrics.increment("orders_confirmed" if finished.committed else "orders_cancelled")

    def _check_running(self) -> None:
        if not self._runtime.running:
            failure = self._runtime.failure
            raise SystemNotRunning(
                f"the order system failed: {failure}"
                if failure
                else "the order system is not running; call start()"
            )

    def _ask(self, participant: str, message: Any) -> Any:
        self._check_running()
        return self._runtime.ask(participant, message)

    def _remote_has(self, service: str) -> bool:
        return self._remote is not None and service in self._remote.urls

    def _remote_call(self, call: Callable[[RemoteServices], T]) -> T:
        """A view or a restock over HTTP, from the caller's thread (the client runs while the system does)."""
        self._check_running()
        assert self._remote is not None
        return call(self._remote)

    @property
    def _timer(self) -> Any:  # for tests that look at the timer's queue
        return self._runtime.timer


class NodeOutcomes(SagaRegistry):
    """The orders in flight on a node of a cluster and their callers: answered True (confirmed)
    or False, and an order id reused with other content is an `IdempotencyConflict`."""

    def outcome_of(self, finished: SagaFinished) -> bool:
        return finished.committed

    def conflict(self, saga_id: str) -> Exception:
        return IdempotencyConflict(saga_id)


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


def _check_services(
    inventory: object,
    payment: object,
    token: object,
    stock: object,
    inventory_faults: object,
    payment_faults: object,
) -> dict[str, str]:
    """The services' URLs given (checked), or ValueError naming each problem. The token is never shown."""
    problems = []
    urls = {}
    given = (("inventory", inventory, inventory_faults), ("payment", payment, payment_faults))
    for name, url, faults in given:
        if url is None:
            continue
        problems += url_problems(name, url)
        urls[name] = cast(str, url)
        if faults is not None:
            problems.append(f"{name}_faults cannot go with a {name} URL: faults belong to the service")
    if stock is not None and inventory is not None:
        problems.append("stock cannot go with an inventory URL: the stock belongs to the service process")
    if urls:
        problems += token_problems(resolve_token(cast("str | None", token)))
    elif token is not None:
        problems.append("service_token is only used with an inventory or payment URL")
    if problems:
        raise ValueError("invalid OrderSystem arguments: " + "; ".join(problems))
    return urls


def _check_order_id(order_id: object) -> None:
    if not isinstance(order_id, str):
        raise ValueError(f"order_id must be a string, got {type(order_id).__name__}")


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
    shared = hasattr(journal_path, "acquire_lease") and hasattr(journal_path, "fenced")  # a LeaseStore
    if (
        journal_path is not None
        and not shared
        and not (isinstance(journal_path, (str, os.PathLike)) and os.fspath(journal_path))
    ):
        problems.append(
            f"journal must be a non-empty path, a PostgreSQL URL or None, got {journal_path!r:.60}"
        )
    if snapshot_every is not None and (
        isinstance(snapshot_every, bool) or not isinstance(snapshot_every, int) or snapshot_every < 1
    ):
        problems.append(f"snapshot_every must be a positive integer or None, got {snapshot_every!r}")
    if not (is_finite_number(retention) and 0 < retention < FOREVER):  # type: ignore[operator]
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
