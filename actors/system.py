"""`OrderSystem`: the public, embeddable face of the order engine.

It wires the actors together - the order service, the inventory and payment
services (simulated, behind a faulty wire), a saga actor per order in
flight, the timer - and offers a small blocking API on top of them. It stops
only the actors it started, never an embedding application's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pykka

from actors.consistency import Check, check_consistency
from actors.errors import SystemNotRunning
from actors.codec import order_codec
from actors.inventory import PERSISTENCE_ID as INVENTORY_ID
from actors.inventory import GetStock, InventoryActor, StockView, stock_command
from actors.order_saga import ORDER_SAGA, OrderSagaData
from actors.orders import GetOrder, GetOrders, InFlight, OrderService, OrderView, PlaceOrder, RecoverOrders
from actors.payment import GetPayments, PaymentActor, PaymentView
from actors.simulation import FaultInjector, FaultPlan, SimulatedLink
from actors.validation import OrderRequest, validate_order
from persistence.journal import InMemoryJournal, JournalWithSnapshots
from persistence.sqlite import SQLiteJournal
from sagas.actor import SagaActor, SagaFinished, saga_persistence_id
from sagas.engine import FINAL_EVENTS, CommitDecided
from sagas.metrics import Metrics
from sagas.policy import RetryPolicy
from supervision.timer import Timer

__all__ = ["OrderFuture", "OrderSystem", "RecoveryReport"]

logger = logging.getLogger(__name__)

QUERY_TIMEOUT = 10.0
RECOVERY_TIMEOUT = 600.0  # seconds an actor may take to replay its journal
DEFAULT_SNAPSHOT_EVERY = 1000  # events between snapshots of the long-lived actors  # seconds a view query may take before something is badly wrong

METRIC_NAMES = (
    "orders_placed",
    "orders_confirmed",
    "orders_cancelled",
    "duplicates",
    "idempotency_conflicts",
    "retries",
    "compensations",
    "restarts",
)


@dataclass(frozen=True)
class RecoveryReport:
    """What `start()` found in the journal."""

    sagas_resumed: int = 0
    rolled_forward: int = 0  # the commit decision was recorded: driven to the end
    rolled_back: int = 0  # no decision: presumed abort, compensated
    orders_never_started: int = 0  # journaled, but the saga never began: cancelled


class OrderFuture:
    """The outcome of one submitted order: `get()` gives True (confirmed) or False."""

    def __init__(self, future: pykka.Future[bool], order_id: str | None) -> None:
        self._future = future
        self.order_id = order_id

    def get(self, timeout: float | None = None) -> bool:
        """Wait for the outcome; raise TimeoutError if unknown after `timeout` seconds.

        Raises the request's error too (InvalidOrder, IdempotencyConflict).
        A timeout does not cancel the order: it carries on.
        """
        try:
            return bool(self._future.get(timeout=timeout))
        except pykka.Timeout:
            raise TimeoutError(
                f"order {self.order_id!r}: outcome not known after {timeout} s; it carries on"
            ) from None


class OrderSystem:
    """An order engine: each order is a saga over inventory and payment.

    Use it as a context manager, or call `start()` and `stop()`. Every method
    is safe to call from any thread.
    """

    def __init__(
        self,
        *,
        journal_path: str | None = None,
        stock: Mapping[int, int] | None = None,
        inventory_faults: FaultPlan | None = None,
        payment_faults: FaultPlan | None = None,
        retry: RetryPolicy | None = None,
        snapshot_every: int | None = DEFAULT_SNAPSHOT_EVERY,
    ) -> None:
        _check_arguments(stock, inventory_faults, payment_faults, retry)
        if snapshot_every is not None and (isinstance(snapshot_every, bool)
                                           or not isinstance(snapshot_every, int) or snapshot_every < 1):
            raise ValueError(f"snapshot_every must be a positive integer or None, got {snapshot_every!r}")
        self._snapshot_every = snapshot_every
        self._recovery = RecoveryReport()
        self._journal_path = journal_path
        self._stock = dict(stock or {})
        self._inventory_faults = inventory_faults or FaultPlan()
        self._payment_faults = payment_faults or FaultPlan()
        self._retry = retry or RetryPolicy()
        self._lock = threading.Lock()
        self._running = False
        self._metrics = Metrics(METRIC_NAMES)
        self._in_flight = InFlight()
        self._sagas: dict[str, pykka.ActorRef[Any]] = {}
        self._orders: pykka.ActorRef[Any] | None = None
        self._inventory: pykka.ActorRef[Any] | None = None
        self._payment: pykka.ActorRef[Any] | None = None
        self._timer: Timer | None = None
        self._journal: JournalWithSnapshots | None = None
        self._sagas_lock = threading.Lock()

    # --- lifecycle ---

    def __enter__(self) -> OrderSystem:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> OrderSystem:
        """Start the actors; on an existing journal, recover and resume unfinished sagas.

        If recovery fails (a corrupt journal, say) the error is raised and
        nothing is left running.
        """
        with self._lock:
            if self._running:
                return self
            try:
                self._start_actors()
                self._recovery = self._recover_sagas()
            except BaseException:
                self._shut_down()
                raise
            self._running = True
            logger.info("order system started%s", f" on {self._journal_path}" if self._journal_path else "")
            return self

    def stop(self) -> None:
        """Stop this system's actors (and only them). Orders in flight are left pending."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._shut_down()
            logger.info("order system stopped")

    def _start_actors(self) -> None:
        self._journal = self._open_journal()
        self._timer = Timer("order-system-timer")
        self._timer.start()
        self._seed = self._payment_faults.seed
        inventory_dice = FaultInjector(self._inventory_faults, "inventory")
        payment_dice = FaultInjector(self._payment_faults, "payment")
        every = self._snapshot_every
        self._inventory = InventoryActor.start_recovered(
            self._journal, inventory_dice, snapshot_every=every, timeout=RECOVERY_TIMEOUT)
        self._payment = PaymentActor.start_recovered(
            self._journal, payment_dice, snapshot_every=every, timeout=RECOVERY_TIMEOUT)
        self._orders = OrderService.start_recovered(
            self._journal,
            start_saga=self._start_saga,
            in_flight=self._in_flight,
            metrics=self._metrics,
            snapshot_every=every,
            timeout=RECOVERY_TIMEOUT,
        )
        self._participants = {
            "inventory": SimulatedLink(self._inventory, inventory_dice, self._timer),
            "payment": SimulatedLink(self._payment, payment_dice, self._timer),
            "orders": self._orders,
        }
        if self._stock and self._journal.highest_sequence_nr(INVENTORY_ID) == 0:
            self._ask(self._inventory, stock_command(self._stock))

    def _shut_down(self) -> None:
        """Stop whatever is running: sagas, services, timer, journal - in that order."""
        with self._sagas_lock:
            sagas = list(self._sagas.values())
            self._sagas.clear()
        for ref in sagas:
            _stop(ref)
        for ref in (self._orders, self._inventory, self._payment):
            if ref is not None:
                _stop(ref)
        if self._timer is not None:
            self._timer.stop()
        if self._journal is not None:
            self._journal.close()
        self._orders = self._inventory = self._payment = None
        self._timer = None
        self._journal = None

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
        self._tell(self._orders, PlaceOrder(order, future))
        return OrderFuture(future, order.order_id)

    def place_order(self, request: Any, *, timeout: float | None = None) -> bool:
        """Place an order and wait: True once confirmed, False once rolled back."""
        return self.submit(request).get(timeout)

    def order(self, order_id: str) -> OrderView | None:
        return self._ask(self._orders, GetOrder(order_id))

    def orders(self) -> dict[str, OrderView]:
        return self._ask(self._orders, GetOrders())

    def inventory(self) -> dict[int, StockView]:
        return self._ask(self._inventory, GetStock())

    def payments(self) -> dict[str, PaymentView]:
        return self._ask(self._payment, GetPayments())

    def metrics(self) -> dict[str, int]:
        counts = self._metrics.snapshot()
        counts["in_flight"] = len(self._in_flight)
        return counts

    def check_consistency(self, initial_stock: Mapping[int, int] | None = None) -> list[Check]:
        """Run the consistency checks (meaningful once `wait_idle()` is true).

        `initial_stock` defaults to the `stock` this system was created with.
        """
        return check_consistency(
            self._stock if initial_stock is None else initial_stock,
            self.orders(),
            self.inventory(),
            self.payments(),
        )

    def recovery(self) -> RecoveryReport:
        """What the last `start()` found in the journal."""
        return self._recovery

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no saga is in flight; False if some still are after `timeout`."""
        return self._in_flight.wait_empty(timeout)

    # --- wiring ---

    def _open_journal(self) -> JournalWithSnapshots:
        if self._journal_path is None:
            return InMemoryJournal()
        return SQLiteJournal(self._journal_path, order_codec())

    def _recover_sagas(self) -> RecoveryReport:
        """Resume every saga the journal shows unfinished; cancel orders whose saga never began."""
        prefix = saga_persistence_id(ORDER_SAGA, "")
        started: set[str] = set()
        unfinished: list[tuple[str, bool]] = []
        for persistence_id in self._journal.persistence_ids(prefix):
            saga_id = persistence_id[len(prefix):]
            started.add(saga_id)
            events = [stored.event for stored in self._journal.replay(persistence_id)]
            if events and isinstance(events[-1], FINAL_EVENTS):
                continue
            unfinished.append((saga_id, any(isinstance(e, CommitDecided) for e in events)))
        never_started = self._ask(self._orders, RecoverOrders(frozenset(started)))
        for saga_id, _ in unfinished:
            self._in_flight.add(saga_id)
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

    def _start_saga(self, order: OrderRequest) -> None:
        """Called by the order service, in its thread, for each new order."""
        self._spawn_saga(order.order_id, OrderSagaData.from_order(order), order.card)

    def _spawn_saga(self, saga_id: str, data: OrderSagaData | None = None, card: Any = None) -> None:
        ref = SagaActor.start(
            definition=ORDER_SAGA,
            saga_id=saga_id,
            journal=self._journal,
            participants=self._participants,
            timer=self._timer,
            policy=self._retry,
            on_finish=self._saga_finished,
            metrics=self._metrics,
            data=data,
            ephemeral=card,
            seed=self._seed,
            log_context={"order_id": saga_id},
        )
        with self._sagas_lock:
            self._sagas[saga_id] = ref

    def _saga_finished(self, finished: SagaFinished) -> None:
        """Called by a saga actor, in its thread, once its end is journaled."""
        with self._sagas_lock:
            self._sagas.pop(finished.saga_id, None)
        try:
            self._orders.tell(finished)
        except pykka.ActorDeadError:
            logger.debug("[%s] finished after the order service stopped", finished.saga_id)

    def _tell(self, ref: pykka.ActorRef[Any] | None, message: Any) -> None:
        if not self._running or ref is None:
            raise SystemNotRunning("the order system is not running; call start()")
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            raise SystemNotRunning("the order system is stopping") from None

    def _ask(self, ref: pykka.ActorRef[Any] | None, message: Any) -> Any:
        if ref is None:
            raise SystemNotRunning("the order system is not running; call start()")
        try:
            return ref.ask(message, timeout=QUERY_TIMEOUT)
        except pykka.ActorDeadError:
            raise SystemNotRunning("the order system is not running; call start()") from None


def _stop(ref: pykka.ActorRef[Any]) -> None:
    try:
        ref.stop(block=True, timeout=QUERY_TIMEOUT)
    except pykka.ActorDeadError:
        pass


def _order_id_of(request: Any) -> str | None:
    order_id = request.get("order_id") if isinstance(request, Mapping) else None
    return order_id if isinstance(order_id, str) else None


def _check_arguments(
    stock: Mapping[int, int] | None,
    inventory_faults: FaultPlan | None,
    payment_faults: FaultPlan | None,
    retry: RetryPolicy | None,
) -> None:
    problems = []
    if stock is not None:
        if not isinstance(stock, Mapping):
            problems.append(f"stock must be a mapping of product id to quantity, got {type(stock).__name__}")
        else:
            for product_id, quantity in stock.items():
                if isinstance(product_id, bool) or not isinstance(product_id, int) or product_id < 0:
                    problems.append(f"stock: product id {product_id!r} is not a non-negative integer")
                if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
                    problems.append(f"stock[{product_id!r}]: quantity {quantity!r} is not a non-negative integer")
    for name, value in (("inventory_faults", inventory_faults), ("payment_faults", payment_faults)):
        if value is not None and not isinstance(value, FaultPlan):
            problems.append(f"{name} must be a FaultPlan, got {type(value).__name__}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        problems.append(f"retry must be a RetryPolicy, got {type(retry).__name__}")
    if problems:
        raise ValueError("invalid OrderSystem arguments: " + "; ".join(problems))
