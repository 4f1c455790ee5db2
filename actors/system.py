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
from typing import Any

import pykka

from actors.consistency import Check, check_consistency
from actors.errors import SystemNotRunning
from actors.inventory import GetStock, InventoryActor, StockView, stock_command
from actors.order_saga import ORDER_SAGA, OrderSagaData
from actors.orders import GetOrder, GetOrders, InFlight, OrderService, OrderView, PlaceOrder
from actors.payment import GetPayments, PaymentActor, PaymentView
from actors.simulation import FaultInjector, FaultPlan, SimulatedLink
from actors.validation import OrderRequest, validate_order
from persistence.journal import InMemoryJournal, Journal
from sagas.actor import SagaActor, SagaFinished
from sagas.metrics import Metrics
from sagas.policy import RetryPolicy
from sagas.timer import Timer

__all__ = ["OrderFuture", "OrderSystem"]

logger = logging.getLogger(__name__)

QUERY_TIMEOUT = 10.0  # seconds a view query may take before something is badly wrong

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
    ) -> None:
        _check_arguments(stock, inventory_faults, payment_faults, retry)
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
        self._sagas_lock = threading.Lock()

    # --- lifecycle ---

    def __enter__(self) -> OrderSystem:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> OrderSystem:
        with self._lock:
            if self._running:
                return self
            self._journal: Journal = self._open_journal()
            self._timer = Timer("order-system-timer")
            self._timer.start()
            self._seed = self._payment_faults.seed
            inventory_dice = FaultInjector(self._inventory_faults, "inventory")
            payment_dice = FaultInjector(self._payment_faults, "payment")
            self._inventory = InventoryActor.start(self._journal, inventory_dice)
            self._payment = PaymentActor.start(self._journal, payment_dice)
            self._orders = OrderService.start(
                self._journal,
                start_saga=self._start_saga,
                in_flight=self._in_flight,
                metrics=self._metrics,
            )
            self._participants = {
                "inventory": SimulatedLink(self._inventory, inventory_dice, self._timer),
                "payment": SimulatedLink(self._payment, payment_dice, self._timer),
                "orders": self._orders,
            }
            if self._stock and not self._ask(self._inventory, GetStock()):
                self._ask(self._inventory, stock_command(self._stock))
            self._running = True
            logger.info("order system started")
            return self

    def stop(self) -> None:
        """Stop this system's actors (and only them). Orders in flight are left pending."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            with self._sagas_lock:
                sagas = list(self._sagas.values())
                self._sagas.clear()
            for ref in sagas:
                _stop(ref)
            for ref in (self._orders, self._inventory, self._payment):
                if ref is not None:
                    _stop(ref)
            self._timer.stop()
            self._journal.close()
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

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once no saga is in flight; False if some still are after `timeout`."""
        return self._in_flight.wait_empty(timeout)

    # --- wiring ---

    def _open_journal(self) -> Journal:
        if self._journal_path is None:
            return InMemoryJournal()
        raise NotImplementedError("a journal file needs the SQLite journal (not built yet)")

    def _start_saga(self, order: OrderRequest) -> None:
        """Called by the order service, in its thread, for each new order."""
        order_id = order.order_id
        ref = SagaActor.start(
            definition=ORDER_SAGA,
            saga_id=order_id,
            journal=self._journal,
            participants=self._participants,
            timer=self._timer,
            policy=self._retry,
            on_finish=self._saga_finished,
            metrics=self._metrics,
            data=OrderSagaData.from_order(order),
            ephemeral=order.card,
            seed=self._seed,
            log_context={"order_id": order_id},
        )
        with self._sagas_lock:
            self._sagas[order_id] = ref

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
