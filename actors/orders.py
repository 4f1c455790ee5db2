"""The order service: the orders in hand, and the front door of the sagas.

It turns a validated request into an order (once per order id: a repeat with
the same content gets the first outcome, different content is a conflict),
starts the order's saga, and answers everyone waiting for that order when
the saga has finished. The saga confirms or cancels the order through the
same request/reply protocol as the other participants.

Its state holds the orders in flight and those finished within the retention
window. An order finished before that is forgotten here (`RetentionExpired`)
but not lost: its saga's stream in the journal (`saga:order:<order_id>`)
holds its content, fingerprint and outcome, and one indexed read of that
stream answers `GetOrder` and a repeated `PlaceOrder` for it. What every
confirmed order ever adds up to is kept in running totals (`SalesView`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal

import pykka

from saga_actors.actors.errors import IdempotencyConflict
from saga_actors.actors.validation import OrderItem, OrderRequest
from saga_actors.persistence.journal import JournalWithSnapshots
from saga_actors.sagas.host import SagaFinished
from saga_actors.sagas.metrics import Metrics
from saga_actors.sagas.participant import Answer, ParticipantActor
from saga_actors.sagas.protocol import Reply, Request
from saga_actors.sagas.retention import ExpireRetention, Retained, RetentionExpired
from saga_actors.sagas.runtime import SagaRegistry
from saga_actors.sagas.runtime import answer as answer_caller
from saga_actors.supervision.timer import Timer

__all__ = [
    "CancelOrder",
    "ConfirmOrder",
    "GetOrder",
    "GetOrders",
    "GetSales",
    "JournaledOrder",
    "OrderCancelled",
    "OrderConfirmed",
    "OrderPlaced",
    "OrderService",
    "OrderView",
    "OrdersState",
    "Outcomes",
    "PlaceOrder",
    "RecoverOrders",
    "SalesView",
    "StreamOrders",
    "answer",
    "decide",
    "evolve",
    "sales_of",
]

logger = logging.getLogger(__name__)

PERSISTENCE_ID = "orders"

OrderState = Literal["pending", "confirmed", "cancelled"]
PENDING: Final = "pending"
CONFIRMED: Final = "confirmed"
CANCELLED: Final = "cancelled"
INTERRUPTED: Final = "interrupted"  # the reason of an order whose saga never began (a crash came first)


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
    """Query: the view of every order in memory - in flight, or finished within the retention window."""


@dataclass(frozen=True, slots=True)
class GetSales:
    """Query: every order ever confirmed, counted and summed (a `SalesView`)."""


@dataclass(frozen=True, slots=True)
class RecoverOrders:
    """After a restart: cancel the pending orders whose saga never started.

    The order was journaled but the process died before its saga was: no
    request about it ever left, so there is nothing to compensate.
    `saga_started(order_id)` says whether the order's saga journaled
    anything (one indexed read); it is asked only about pending orders, so
    recovery costs what is in flight, not what is in the journal.
    """

    saga_started: Callable[[str], bool]


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

    @classmethod
    def of(cls, order: OrderRequest, fingerprint: str | None = None) -> OrderPlaced:
        """The placement of a validated `order` (its fingerprint computed unless given)."""
        return cls(
            order.order_id,
            order.user_id,
            order.items,
            order.amount,
            order.currency,
            order.card.last4,
            order.fingerprint() if fingerprint is None else fingerprint,
        )


@dataclass(frozen=True, slots=True)
class OrderConfirmed:
    order_id: str


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    order_id: str
    reason: str


# --- state ---


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """One order; immutable (a change replaces it), so copies of the state share it."""

    placed: OrderPlaced
    state: OrderState = PENDING
    reason: str | None = None


@dataclass(slots=True)
class OrdersState:
    """The orders in flight and those finished within the retention window, by order id; and
    running totals of every confirmed order ever (never forgotten)."""

    orders: dict[str, OrderRecord] = field(default_factory=dict)
    retained: Retained = field(default_factory=Retained)  # the finished orders
    forgotten: int = 0  # orders ever forgotten: until one is, every order is in `orders`
    confirmed_count: int = 0
    confirmed_units: dict[int, int] = field(default_factory=dict)  # product id -> units sold
    confirmed_amounts: dict[str, Decimal] = field(default_factory=dict)  # currency -> amount

    def copy(self) -> OrdersState:
        """A copy for a snapshot or a view: the containers are copied, the immutable entries shared."""
        return OrdersState(
            dict(self.orders),
            self.retained.copy(),
            self.forgotten,
            self.confirmed_count,
            dict(self.confirmed_units),
            dict(self.confirmed_amounts),
        )


@dataclass(frozen=True, slots=True)
class OrderView:
    order_id: str
    state: OrderState
    reason: str | None
    amount: Decimal
    items: tuple[OrderItem, ...]


@dataclass(frozen=True, slots=True)
class SalesView:
    """Every order ever confirmed: how many, the units sold per product id, and the amount
    per currency (three-letter code)."""

    orders: int
    units: Mapping[int, int]
    amounts: Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class JournaledOrder:
    """An order as its saga's stream in the journal records it (for orders no longer in memory).

    `fingerprint` is "" for a saga journaled before 0.4.0, which did not
    record it; `card_last4` and the view's items and amount are compared then.
    """

    view: OrderView
    currency: str
    card_last4: str
    fingerprint: str

    def same_order(self, order: OrderRequest, fingerprint: str) -> bool:
        """Whether `order` (whose fingerprint is `fingerprint`) repeats this one."""
        if self.fingerprint:
            return self.fingerprint == fingerprint
        return (
            sorted((i.product_id, i.quantity) for i in order.items)
            == sorted((i.product_id, i.quantity) for i in self.view.items)
            and order.amount == self.view.amount
            and order.currency == self.currency
            and order.card.last4 == self.card_last4
        )


# --- rules ---


def decide(command: Any, state: OrdersState, journaled: JournaledOrder | None = None) -> list[Any]:
    """The events `command` brings about; raises IdempotencyConflict for an order id reused
    with other content. `journaled` is what the journal holds of a `PlaceOrder`'s order id
    when it is not in `state` (forgotten past the retention window), else None."""
    match command:
        case PlaceOrder(order=order):
            record = state.orders.get(order.order_id)
            fingerprint = order.fingerprint()
            if record is not None:
                if record.placed.fingerprint != fingerprint:
                    raise IdempotencyConflict(order.order_id)
                return []
            if journaled is not None:
                if not journaled.same_order(order, fingerprint):
                    raise IdempotencyConflict(order.order_id)
                return []
            return [OrderPlaced.of(order, fingerprint)]
        case ConfirmOrder(order_id=order_id):
            return [OrderConfirmed(order_id)] if _status(state, order_id) == PENDING else []
        case CancelOrder(order_id=order_id, reason=reason):
            return [OrderCancelled(order_id, reason)] if _status(state, order_id) == PENDING else []
        case ExpireRetention():
            return state.retained.expire(command)
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
            placed = state.orders[order_id].placed
            state.orders[order_id] = OrderRecord(placed, CONFIRMED)
            state.confirmed_count += 1
            for item in placed.items:
                state.confirmed_units[item.product_id] = (
                    state.confirmed_units.get(item.product_id, 0) + item.quantity
                )
            total = state.confirmed_amounts.get(placed.currency, Decimal(0))
            state.confirmed_amounts[placed.currency] = total + placed.amount
            state.retained.finish(order_id)
        case OrderCancelled(order_id=order_id, reason=reason):
            state.orders[order_id] = OrderRecord(state.orders[order_id].placed, CANCELLED, reason)
            state.retained.finish(order_id)
        case RetentionExpired():
            for order_id in state.retained.forget(event):
                if state.orders.pop(order_id, None) is not None:
                    state.forgotten += 1
        case _:
            raise TypeError(f"orders: unknown event {type(event).__name__}")
    return state


def view(record: OrderRecord) -> OrderView:
    placed = record.placed
    return OrderView(placed.order_id, record.state, record.reason, placed.amount, placed.items)


def sales(state: OrdersState) -> SalesView:
    return SalesView(state.confirmed_count, dict(state.confirmed_units), dict(state.confirmed_amounts))


def sales_of(orders: Iterable[JournaledOrder]) -> SalesView:
    """The sales of the confirmed orders among `orders` (as `OrderService` totals them)."""
    count, units, amounts = 0, dict[int, int](), dict[str, Decimal]()
    for order in orders:
        if order.view.state != CONFIRMED:
            continue
        count += 1
        for item in order.view.items:
            units[item.product_id] = units.get(item.product_id, 0) + item.quantity
        amounts[order.currency] = amounts.get(order.currency, Decimal(0)) + order.view.amount
    return SalesView(count, units, amounts)


class StreamOrders(pykka.ThreadingActor):
    """The `orders` participant of a cluster node: no state of its own. Each order's saga
    stream is its record (its commit or rollback decision is journaled before the saga
    confirms or cancels), so `ConfirmOrder` and `CancelOrder` are answered at once, in this
    actor's thread. `start(context)` takes the runtime's `ParticipantContext` and ignores it."""

    def __init__(self, context: object = None) -> None:
        super().__init__()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Request):
            if not isinstance(message.command, (ConfirmOrder, CancelOrder)):
                reply = Reply.rejected(
                    message.correlation, f"unknown command {type(message.command).__name__}"
                )
            else:
                reply = Reply.success(message.correlation)
            if message.reply_to is not None:
                try:
                    message.reply_to.tell(reply)
                except pykka.ActorDeadError:
                    pass  # the saga's host stopped (its node is stopping or rejoining): nobody waits
        return None


def _status(state: OrdersState, order_id: str) -> str | None:
    record = state.orders.get(order_id)
    return record.state if record is not None else None


# --- submissions, sagas in flight, and callers waiting (outside the actor: they survive its restarts) ---


class Outcomes(SagaRegistry):
    """What callers wait for, kept outside every actor so that no restart loses it.

    Besides the sagas in flight and their waiters (`SagaRegistry`; here an
    order's saga id is its order id, and callers are answered True or False):

    - *submissions*: `PlaceOrder` messages handed to the order service and
      not yet durably accepted. A new incarnation of the order service sends
      itself every one again (order ids are idempotency keys), so a message
      dropped with a dead actor's mailbox is not lost.
    - *placing*: orders whose `OrderPlaced` is being written.
    - *running* is filled only from durable facts (the placement written,
      the saga's end written) and rebuilt from the journal at every start,
      so it cannot drift or stick.

    Thread-safe: called from callers' threads, actor threads and the
    journal's thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self._submissions: dict[int, tuple[PlaceOrder, object | None]] = {}
        self._placing: dict[str, list[pykka.Future[bool]]] = {}

    def outcome_of(self, finished: SagaFinished) -> bool:
        return finished.committed

    # submissions

    def submit(self, message: PlaceOrder) -> None:
        with self._lock:
            self._submissions[id(message)] = (message, None)

    def withdraw(self, message: PlaceOrder) -> None:
        """The submission could not be handed over at all (the system is not running)."""
        with self._lock:
            self._submissions.pop(id(message), None)
            self._lock.notify_all()

    def claim(self, message: PlaceOrder, incarnation: object) -> bool:
        """True the first time `incarnation` sees a submission still pending."""
        with self._lock:
            entry = self._submissions.get(id(message))
            if entry is None or entry[0] is not message or entry[1] is incarnation:
                return False
            self._submissions[id(message)] = (message, incarnation)
            return True

    def unclaimed(self, incarnation: object) -> list[PlaceOrder]:
        """Pending submissions that `incarnation` has not seen (to send again)."""
        with self._lock:
            return [m for m, owner in self._submissions.values() if owner is not incarnation]

    def settle(self, message: PlaceOrder, error: BaseException | None = None) -> None:
        """The submission is dealt with; fail its caller with `error` if given."""
        with self._lock:
            entry = self._submissions.pop(id(message), None)
            self._lock.notify_all()
        if entry is not None and error is not None and message.reply is not None:
            answer_caller(message.reply, None, error)

    # placing and running

    def placing(self, order_id: str, message: PlaceOrder) -> None:
        """The order's placement is being written; its caller waits for the outcome."""
        with self._lock:
            futures = self._placing.setdefault(order_id, [])
            if message.reply is not None and not any(f is message.reply for f in futures):
                futures.append(message.reply)  # once, however often the placement is retried

    def placed(self, order_id: str, restart: Any) -> bool:
        """The placement is durable: the order is in flight. False if it already was."""
        with self._lock:
            waiting = self._waiters.setdefault(order_id, [])
            waiting.extend(f for f in self._placing.pop(order_id, []) if not any(f is w for w in waiting))
            if order_id in self._running:
                return False
            self._running[order_id] = restart
            self._since[order_id] = time.time()
            return True

    def join(self, order_id: str, reply: pykka.Future[bool] | None) -> bool:
        """Wait for an order being placed or in flight; False if it is neither."""
        with self._lock:
            if order_id in self._placing:
                target = self._placing[order_id]
            elif order_id in self._running:
                target = self._waiters.setdefault(order_id, [])
            else:
                return False
            if reply is not None and not any(f is reply for f in target):
                target.append(reply)
            return True

    def in_flight(self) -> int:
        with self._lock:
            return len(self._running.keys() | self._placing.keys())

    def wait_idle(self, timeout: float | None) -> bool:
        """True once nothing is submitted, being placed or in flight."""
        with self._lock:
            return self._lock.wait_for(
                lambda: not (self._submissions or self._placing or self._running), timeout
            )

    def _drop_waiting(self) -> list[pykka.Future[Any]]:
        futures: list[pykka.Future[Any]] = [m.reply for m, _ in self._submissions.values() if m.reply]
        futures += [f for fs in self._placing.values() for f in fs]
        self._submissions, self._placing = {}, {}
        return futures + super()._drop_waiting()


# --- the actor ---


class OrderService(ParticipantActor[OrdersState]):
    """Owns the orders; starts a saga per new order once it is durable.

    It takes `PlaceOrder` submissions from `outcomes` (a new incarnation sends
    itself every submission its predecessor did not settle), and confirms or
    cancels orders for the sagas. `start_saga` is called in the journal's
    thread once an order's placement is durable. Callers are answered by the
    sagas' durable ends (see `Outcomes`), never through this actor's mailbox.
    A finished order is remembered for `retention` seconds (None: forever;
    see `ParticipantActor`); after that, `GetOrder` and a repeated
    `PlaceOrder` are answered from its saga's stream in the journal.
    """

    PERSISTENCE_ID = PERSISTENCE_ID

    def __init__(
        self,
        journal: JournalWithSnapshots,
        *,
        start_saga: Callable[[OrderRequest], None],
        outcomes: Outcomes,
        metrics: Metrics,
        snapshot_every: int | None = None,
        retention: float | None = None,
        timer: Timer | None = None,
        in_flight_since: Callable[[], float | None] | None = None,
    ) -> None:
        super().__init__(
            journal,
            snapshot_every=snapshot_every,
            retention=retention,
            timer=timer,
            in_flight_since=in_flight_since,
        )
        self._start_saga = start_saga
        self._outcomes = outcomes
        self._metrics = metrics
        self._incarnation = object()

    def state_size(self, state: OrdersState) -> int:
        return len(state.orders)

    def initial_state(self) -> OrdersState:
        return OrdersState()

    def apply_event(self, state: OrdersState, event: Any) -> OrdersState:
        return evolve(state, event)

    def decide(self, command: Any, state: OrdersState) -> list[Any]:
        return decide(command, state)

    def answer(self, command: Any, state: OrdersState) -> Answer:
        return answer(command, state)

    def on_recovered(self) -> None:
        super().on_recovered()
        # Submissions a predecessor took but never settled died with its mailbox: take them again.
        for message in self._outcomes.unclaimed(self._incarnation):
            self.actor_ref.tell(message)

    def on_other_message(self, message: Any) -> Any:
        match message:
            case PlaceOrder():
                self._place(message)
            case GetOrder(order_id=order_id):
                record = self.state.orders.get(order_id)
                if record is not None:
                    return view(record)
                journaled = self._journaled(order_id)
                return journaled.view if journaled is not None else None
            case GetOrders():
                return {o: view(r) for o, r in self.state.orders.items()}
            case GetSales():
                return sales(self.state)
            case RecoverOrders(saga_started=started):
                return self._cancel_unstarted(started)
            case _:
                return super().on_other_message(message)
        return None

    def _place(self, message: PlaceOrder) -> None:
        if not self._outcomes.claim(message, self._incarnation):
            return  # settled already, or a second copy of one this incarnation took
        order = message.order
        try:
            journaled = self._journaled(order.order_id)
            events = decide(message, self.state, journaled)
        except IdempotencyConflict as conflict:
            self._metrics.increment("idempotency_conflicts")
            self._outcomes.settle(message, conflict)
            return
        except Exception as error:  # one bad message must not take the others down
            logger.exception("[%s] could not place the order", order.order_id)
            self._outcomes.settle(message, error)
            return
        order_id = order.order_id
        if events:
            logger.info(
                "[%s] placed: %d item(s), %s %s",
                order_id,
                len(order.items),
                order.amount,
                order.currency,
                extra={"order_id": order_id},
            )
            self._outcomes.placing(order_id, message)
            # The saga starts once the order is durable: a saga must never act for
            # an order that a crash could make the order service forget.
            self.persist_async(events, lambda: functools.partial(self._placed, order, message))
            return
        self._metrics.increment("duplicates")
        if self._outcomes.join(order_id, message.reply):
            self._outcomes.settle(message)  # waits for the order being placed or in flight
            return
        record = self.state.orders.get(order_id)
        if record is None and journaled is not None and journaled.view.state == PENDING:
            # Neither the commit nor the rollback decision is journaled, yet the order
            # is not in memory, where a pending order always is: nothing to answer from.
            logger.error(
                "[%s] unfinished in the journal, yet forgotten", order_id, extra={"order_id": order_id}
            )
            self._outcomes.settle(message, RuntimeError(f"order {order_id!r}: its outcome is unknown"))
            return
        status = record.state if record is not None else journaled.view.state if journaled else PENDING
        if status != PENDING:
            if message.reply is not None:
                answer_caller(message.reply, status == CONFIRMED)  # its first outcome
            self._outcomes.settle(message)
            return
        # Durable, but no saga runs for it (its start was lost): start it once durable.
        self._outcomes.placing(order_id, message)
        self.persist_async([], lambda: functools.partial(self._placed, order, message))

    def _journaled(self, order_id: str) -> JournaledOrder | None:
        """What the journal holds of an order that is not in memory (one indexed read of its
        saga's stream), or None: the order is in memory, was never placed, or (as nothing
        was ever forgotten) cannot be anywhere else."""
        if order_id in self.state.orders or not self.state.forgotten:
            return None
        # Imported here: order_saga imports this module (the saga drives this service).
        from saga_actors.actors.order_saga import journaled_order

        return journaled_order(self.journal, order_id)

    def _placed(self, order: OrderRequest, message: PlaceOrder) -> None:
        """The placement is durable (runs in the journal's thread): start the saga."""
        if self._outcomes.placed(order.order_id, order):
            self._metrics.increment("orders_placed")  # counted once it is durable, once
            self._start_saga(order)
        self._outcomes.settle(message)

    def _cancel_unstarted(self, saga_started: Callable[[str], bool]) -> list[OrderPlaced]:
        unstarted = [
            order_id
            for order_id, record in self.state.orders.items()
            if record.state == PENDING and not saga_started(order_id)
        ]
        events: list[Any] = []
        for order_id in unstarted:
            logger.info("[%s] cancelled: its saga never started", order_id, extra={"order_id": order_id})
            events += decide(CancelOrder(order_id, INTERRUPTED), self.state)
        self.persist(events)  # one append, however many
        return [self.state.orders[order_id].placed for order_id in unstarted]
