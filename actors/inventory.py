"""The inventory: stock per product, and one all-or-nothing reservation per order.

Reserved units are unavailable to other orders (a semantic lock) until the
reservation is committed (on-hand drops) or released. Every change goes
through the inventory actor's mailbox, one at a time, so there is no
oversell under any concurrency. A release that overtakes its reserve
leaves a tombstone, and the late reserve is refused.

A finished reservation (committed, released, rejected, or a tombstone) is
kept for the retention window, then forgotten (`RetentionExpired`); the
per-product counters - on hand, reserved, received - are never forgotten.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from saga_actors.actors.validation import OrderItem
from saga_actors.sagas.participant import Answer, ParticipantActor
from saga_actors.sagas.retention import ExpireRetention, Retained, RetentionExpired

__all__ = [
    "CommitStock",
    "GetStock",
    "InventoryActor",
    "InventoryState",
    "ProductsStocked",
    "ReleaseStock",
    "ReservationRejected",
    "ReserveStock",
    "StockCommitted",
    "StockProducts",
    "StockReleased",
    "StockReserved",
    "StockView",
    "answer",
    "decide",
    "evolve",
]

PERSISTENCE_ID = "inventory"

INSUFFICIENT_STOCK = "insufficient_stock"
UNKNOWN_PRODUCT = "unknown_product"


# --- commands ---


@dataclass(frozen=True, slots=True)
class StockProducts:
    """Add on-hand units (the initial stock, or a delivery)."""

    stock: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class ReserveStock:
    order_id: str
    items: tuple[OrderItem, ...]


@dataclass(frozen=True, slots=True)
class CommitStock:
    order_id: str


@dataclass(frozen=True, slots=True)
class ReleaseStock:
    order_id: str


@dataclass(frozen=True, slots=True)
class GetStock:
    """Query: every product's view."""


# --- events ---


@dataclass(frozen=True, slots=True)
class ProductsStocked:
    stock: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class StockReserved:
    order_id: str
    items: tuple[OrderItem, ...]


@dataclass(frozen=True, slots=True)
class ReservationRejected:
    order_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class StockCommitted:
    order_id: str


@dataclass(frozen=True, slots=True)
class StockReleased:
    order_id: str


# --- state ---


ReservationStatus = Literal["held", "committed", "released", "rejected"]


@dataclass(frozen=True, slots=True)
class Reservation:
    """One order's reservation; immutable (a change replaces it), so copies of the state share it."""

    items: tuple[OrderItem, ...]
    status: ReservationStatus
    reason: str | None = None


@dataclass(slots=True)
class InventoryState:
    """Stock per product (units; never forgotten) and the reservations active or finished
    within the retention window, by order id."""

    on_hand: dict[int, int] = field(default_factory=dict)
    reserved: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)  # every unit ever stocked
    reservations: dict[str, Reservation] = field(default_factory=dict)
    retained: Retained = field(default_factory=Retained)  # the finished reservations

    def available(self, product_id: int) -> int:
        return self.on_hand[product_id] - self.reserved[product_id]

    def copy(self) -> InventoryState:
        """A copy for a snapshot or a view: the dicts are copied, the immutable entries shared."""
        return InventoryState(
            dict(self.on_hand),
            dict(self.reserved),
            dict(self.received),
            dict(self.reservations),
            self.retained.copy(),
        )


@dataclass(frozen=True, slots=True)
class StockView:
    on_hand: int
    reserved: int
    received: int = 0  # units ever stocked: on_hand = received - units sold

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


# --- rules ---


def decide(command: Any, state: InventoryState) -> list[Any]:
    match command:
        case StockProducts(stock=stock):
            return [ProductsStocked(stock)] if stock else []
        case ReserveStock(order_id=order_id, items=items):
            if order_id in state.reservations:
                return []  # answered from the first result
            if any(i.product_id not in state.on_hand for i in items):
                return [ReservationRejected(order_id, UNKNOWN_PRODUCT)]
            if any(i.quantity > state.available(i.product_id) for i in items):
                return [ReservationRejected(order_id, INSUFFICIENT_STOCK)]
            return [StockReserved(order_id, items)]
        case CommitStock(order_id=order_id):
            held = _status(state, order_id) == "held"
            return [StockCommitted(order_id)] if held else []
        case ReleaseStock(order_id=order_id):
            # Releasing an unknown order leaves a tombstone: its reserve is refused.
            releasable = _status(state, order_id) in ("held", None)
            return [StockReleased(order_id)] if releasable else []
        case ExpireRetention():
            return state.retained.expire(command)
    raise TypeError(f"inventory: unknown command {type(command).__name__}")


def answer(command: Any, state: InventoryState) -> Answer:
    status = _status(state, getattr(command, "order_id", ""))
    match command:
        case StockProducts():
            return True, None
        case ReserveStock(order_id=order_id):
            if status in ("held", "committed"):
                return True, None
            if status == "rejected":
                return False, state.reservations[order_id].reason
            return False, "released"
        case CommitStock():
            if status == "committed":
                return True, None
            return False, "released" if status == "released" else "not_reserved"
        case ReleaseStock():
            if status == "committed":
                return False, "already_committed"
            return True, None
    raise TypeError(f"inventory: unknown command {type(command).__name__}")


def evolve(state: InventoryState, event: Any) -> InventoryState:
    match event:
        case ProductsStocked(stock=stock):
            for product_id, quantity in stock:
                state.on_hand[product_id] = state.on_hand.get(product_id, 0) + quantity
                state.received[product_id] = state.received.get(product_id, 0) + quantity
                state.reserved.setdefault(product_id, 0)
        case StockReserved(order_id=order_id, items=items):
            for item in items:
                state.reserved[item.product_id] += item.quantity
            state.reservations[order_id] = Reservation(items, "held")
        case ReservationRejected(order_id=order_id, reason=reason):
            state.reservations[order_id] = Reservation((), "rejected", reason)
            state.retained.finish(order_id)
        case StockCommitted(order_id=order_id):
            reservation = state.reservations[order_id]
            for item in reservation.items:
                state.on_hand[item.product_id] -= item.quantity
                state.reserved[item.product_id] -= item.quantity
            state.reservations[order_id] = Reservation(reservation.items, "committed")
            state.retained.finish(order_id)
        case StockReleased(order_id=order_id):
            held = state.reservations.get(order_id)
            if held is None:
                state.reservations[order_id] = Reservation((), "released")  # a tombstone
            else:
                for item in held.items:
                    state.reserved[item.product_id] -= item.quantity
                state.reservations[order_id] = Reservation(held.items, "released")
            state.retained.finish(order_id)
        case RetentionExpired():
            for order_id in state.retained.forget(event):
                state.reservations.pop(order_id, None)
        case _:
            raise TypeError(f"inventory: unknown event {type(event).__name__}")
    return state


def views(state: InventoryState) -> dict[int, StockView]:
    return {
        p: StockView(state.on_hand[p], state.reserved[p], state.received[p]) for p in sorted(state.on_hand)
    }


def _status(state: InventoryState, order_id: str) -> str | None:
    reservation = state.reservations.get(order_id)
    return reservation.status if reservation is not None else None


def stock_command(stock: Mapping[int, int]) -> StockProducts:
    return StockProducts(tuple(sorted(stock.items())))


# --- the actor ---


class InventoryActor(ParticipantActor[InventoryState]):
    PERSISTENCE_ID = PERSISTENCE_ID

    def state_size(self, state: InventoryState) -> int:
        return len(state.reservations) + len(state.on_hand)

    def initial_state(self) -> InventoryState:
        return InventoryState()

    def apply_event(self, state: InventoryState, event: Any) -> InventoryState:
        return evolve(state, event)

    def decide(self, command: Any, state: InventoryState) -> list[Any]:
        return decide(command, state)

    def answer(self, command: Any, state: InventoryState) -> Answer:
        return answer(command, state)

    def on_other_message(self, message: Any) -> Any:
        match message:
            case GetStock():
                return views(self.state)
            case StockProducts():
                # Administrative: applied directly, without simulated faults.
                self.persist(decide(message, self.state))
                return None
        return super().on_other_message(message)
