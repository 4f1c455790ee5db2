"""The order service: the record of every order, and the front door of the sagas.

It turns a validated request into an order (once per order id: a repeat with
the same content gets the first outcome, different content is a conflict),
starts the order's saga, and answers everyone waiting for that order when
the saga has finished. The saga confirms or cancels the order through the
same request/reply protocol as the other participants.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

import pykka

from saga_actors.actors.errors import IdempotencyConflict
from saga_actors.actors.participant import Answer, ParticipantActor
from saga_actors.actors.validation import OrderItem, OrderRequest
from saga_actors.persistence.journal import JournalWithSnapshots
from saga_actors.sagas.actor import SagaFinished
from saga_actors.sagas.metrics import Metrics

__all__ = [
    "CancelOrder",
    "ConfirmOrder",
    "GetOrder",
    "GetOrders",
    "InFlight",
    "OrderCancelled",
    "OrderConfirmed",
    "OrderPlaced",
    "OrderService",
    "OrderView",
    "OrdersState",
    "PlaceOrder",
    "RecoverOrders",
    "Waiters",
    "answer",
    "decide",
    "evolve",
]

logger = logging.getLogger(__name__)

PERSISTENCE_ID = "orders"

OrderState = Literal["pending", "confirmed", "cancelled"]
PENDING: Final = "pending"
CONFIRMED: Final = "confirmed"
CANCELLED: Final = "cancelled"


# --- commands ---


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    order: OrderRequest
    reply: pykka.Future[bool] | None = None


@dataclass(frozen=True, slots=True)
class ConfirmOrder:
    order_id: str


@dataclass(frozen=True, slots=True)
class CancelOrder:
    order_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class GetOrder:
    order_id: str


@dataclass(frozen=True, slots=True)
class GetOrders:
    """Query: every order's view."""


@dataclass(frozen=True, slots=True)
class RecoverOrders:
    """After a restart: cancel the pending orders whose saga never started.

    The order was journaled but the process died before its saga was: no
    request about it ever left, so there is nothing to compensate.
    """

    sagas_started: frozenset[str]


# --- events ---


@dataclass(frozen=True, slots=True)
class OrderPlaced:
    order_id: str
    user_id: int
    items: tuple[OrderItem, ...]
    amount: Decimal
    currency: str
    card_last4: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class OrderConfirmed:
    order_id: str


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    order_id: str
    reason: str


# --- state ---


@dataclass(slots=True)
class OrderRecord:
    placed: OrderPlaced
    state: OrderState = PENDING
    reason: str | None = None


@dataclass(slots=True)
class OrdersState:
    orders: dict[str, OrderRecord] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OrderView:
    order_id: str
    state: OrderState
    reason: str | None
    amount: Decimal
    items: tuple[OrderItem, ...]


# --- rules ---


def decide(command: Any, state: OrdersState) -> list[Any]:
    match command:
        case PlaceOrder(order=order):
            record = state.orders.get(order.order_id)
            fingerprint = order.fingerprint()
            if record is not None:
                if record.placed.fingerprint != fingerprint:
                    raise IdempotencyConflict(order.order_id)
                return []
            return [
                OrderPlaced(
                    order.order_id,
                    order.user_id,
                    order.items,
                    order.amount,
                    order.currency,
                    order.card.last4,
                    fingerprint,
                )
            ]
        case ConfirmOrder(order_id=order_id):
            return [OrderConfirmed(order_id)] if _status(state, order_id) == PENDING else []
        case CancelOrder(order_id=order_id, reason=reason):
            return [OrderCancelled(order_id, reason)] if _status(state, order_id) == PENDING else []
    raise TypeError(f"orders: unknown command {type(command).__name__}")


def answer(command: Any, state: OrdersState) -> Answer:
    status = _status(state, command.order_id)
    match command:
        case ConfirmOrder():
            return (True, None) if status == CONFIRMED else (False, f"order is {status or 'unknown'}")
        case CancelOrder():
            return (True, None) if status == CANCELLED else (False, f"order is {status or 'unknown'}")
    raise TypeError(f"orders: unknown command {type(command).__name__}")


def evolve(state: OrdersState, event: Any) -> OrdersState:
    match event:
        case OrderPlaced(order_id=order_id):
            state.orders[order_id] = OrderRecord(event)
        case OrderConfirmed(order_id=order_id):
            state.orders[order_id].state = CONFIRMED
        case OrderCancelled(order_id=order_id, reason=reason):
            record = state.orders[order_id]
            record.state, record.reason = CANCELLED, reason
        case _:
            raise TypeError(f"orders: unknown event {type(event).__name__}")
    return state


def view(record: OrderRecord) -> OrderView:
    placed = record.placed
    return OrderView(placed.order_id, record.state, record.reason, placed.amount, placed.items)


def _status(state: OrdersState, order_id: str) -> str | None:
    record = state.orders.get(order_id)
    return record.state if record is not None else None


# --- callers waiting, and sagas in flight (outside the actor: they survive its restarts) ---


class Waiters:
    """The futures of callers waiting for an order's outcome."""

    def __init__(self) -> None:
        self._futures: dict[str, list[pykka.Future[bool]]] = {}
        self._lock = threading.Lock()

    def add(self, order_id: str, future: pykka.Future[bool]) -> None:
        with self._lock:
            self._futures.setdefault(order_id, []).append(future)

    def resolve(self, order_id: str, confirmed: bool) -> None:
        with self._lock:
            futures = self._futures.pop(order_id, [])
        for future in futures:
            future.set(confirmed)

    def fail_all(self, error: Exception) -> None:
        with self._lock:
            waiting, self._futures = self._futures, {}
        for futures in waiting.values():
            for future in futures:
                future.set_exception(exc_info=(type(error), error, None))


class InFlight:
    """The ids of sagas not yet finished, and a way to wait until there are none."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._condition = threading.Condition()

    def add(self, saga_id: str) -> None:
        with self._condition:
            self._ids.add(saga_id)

    def discard(self, saga_id: str) -> None:
        with self._condition:
            self._ids.discard(saga_id)
            if not self._ids:
                self._condition.notify_all()

    def __contains__(self, saga_id: object) -> bool:
        with self._condition:
            return saga_id in self._ids

    def __len__(self) -> int:
        with self._condition:
            return len(self._ids)

    def ids(self) -> list[str]:
        with self._condition:
            return sorted(self._ids)

    def wait_empty(self, timeout: float | None) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: not self._ids, timeout)


# --- the actor ---


class OrderService(ParticipantActor[OrdersState]):
    """Owns the orders; starts a saga per new order and answers its waiters."""

    PERSISTENCE_ID = PERSISTENCE_ID

    def __init__(
        self,
        journal: JournalWithSnapshots,
        *,
        start_saga: Callable[[OrderRequest], None],
        in_flight: InFlight,
        waiters: Waiters,
        metrics: Metrics,
        snapshot_every: int | None = None,
    ) -> None:
        super().__init__(journal, snapshot_every=snapshot_every)
        self._start_saga = start_saga
        self._in_flight = in_flight
        self._metrics = metrics
        self._waiters = waiters

    def initial_state(self) -> OrdersState:
        return OrdersState()

    def apply_event(self, state: OrdersState, event: Any) -> OrdersState:
        return evolve(state, event)

    def decide(self, command: Any, state: OrdersState) -> list[Any]:
        return decide(command, state)

    def answer(self, command: Any, state: OrdersState) -> Answer:
        return answer(command, state)

    def on_other_message(self, message: Any) -> Any:
        match message:
            case PlaceOrder():
                self._place(message)
            case SagaFinished():
                self._finished(message)
            case GetOrder(order_id=order_id):
                record = self.state.orders.get(order_id)
                return view(record) if record is not None else None
            case GetOrders():
                return {o: view(r) for o, r in self.state.orders.items()}
            case RecoverOrders(sagas_started=started):
                return self._cancel_unstarted(started)
            case _:
                return super().on_other_message(message)
        return None

    def _place(self, message: PlaceOrder) -> None:
        order = message.order
        try:
            events = decide(message, self.state)
        except IdempotencyConflict as conflict:
            self._metrics.increment("idempotency_conflicts")
            if message.reply is not None:
                message.reply.set_exception(exc_info=(type(conflict), conflict, None))
            return
        if message.reply is not None:
            self._waiters.add(order.order_id, message.reply)
        if not events:
            self._metrics.increment("duplicates")
            record = self.state.orders[order.order_id]
            if order.order_id not in self._in_flight and record.state != PENDING:
                self._answer_waiters(order.order_id)
            return
        self._metrics.increment("orders_placed")
        self._in_flight.add(order.order_id)
        logger.info(
            "[%s] placed: %d item(s), %s %s",
            order.order_id,
            len(order.items),
            order.amount,
            order.currency,
            extra={"order_id": order.order_id},
        )
        # The saga starts once the order is durable: a saga must never act for
        # an order that a crash could make the order service forget.
        self.persist_async(events, lambda: functools.partial(self._start_saga, order))

    def _cancel_unstarted(self, sagas_started: frozenset[str]) -> list[str]:
        unstarted = [
            order_id
            for order_id, record in self.state.orders.items()
            if record.state == PENDING and order_id not in sagas_started
        ]
        for order_id in unstarted:
            logger.info("[%s] cancelled: its saga never started", order_id, extra={"order_id": order_id})
            self.persist(decide(CancelOrder(order_id, "interrupted"), self.state))
        return unstarted

    def _finished(self, finished: SagaFinished) -> None:
        if finished.saga_id not in self._in_flight:
            return  # told twice (a saga resumed after it had finished): already answered
        record = self.state.orders.get(finished.saga_id)
        if record is None:
            logger.error("[%s] saga finished for an unknown order", finished.saga_id)
            return
        if record.state == PENDING:
            # The saga never began (it failed before journaling its start), so
            # no request about the order left: cancel it.
            logger.warning(
                "[%s] saga ended without starting; cancelling the order",
                finished.saga_id,
                extra={"order_id": finished.saga_id},
            )
            self.persist(decide(CancelOrder(finished.saga_id, "interrupted"), self.state))
        self._metrics.increment("orders_confirmed" if record.state == CONFIRMED else "orders_cancelled")
        self._in_flight.discard(finished.saga_id)
        self._answer_waiters(finished.saga_id)

    def _answer_waiters(self, order_id: str) -> None:
        self._waiters.resolve(order_id, self.state.orders[order_id].state == CONFIRMED)
