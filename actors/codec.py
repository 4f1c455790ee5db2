"""Which types the order system's journal may hold.

Commands are absent on purpose: `AuthorizePayment` carries the card, and a
journal refuses any type not listed here.

Versions: the payment and order states are at version 2 (0.4.0), which added
running totals; a version-1 snapshot (0.3) held every payment and order ever,
so its totals are summed from its entries when it is read (the upcasters
below work on the stored JSON, tagged as `persistence/serialization.py` says).
Fields added with a default need no new version: `OrderSagaData.fingerprint`,
the states' `retained`.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from saga_actors.actors import inventory, orders, payment
from saga_actors.actors.order_saga import OrderSagaData
from saga_actors.actors.validation import OrderItem
from saga_actors.persistence.serialization import EventCodec
from saga_actors.sagas.engine import DURABLE_EVENTS
from saga_actors.sagas.retention import FinishedBatch, Retained, RetentionExpired

__all__ = ["order_codec"]


def order_codec() -> EventCodec:
    codec = EventCodec()
    codec.register_all(
        OrderItem,
        OrderSagaData,
        *DURABLE_EVENTS,
        # every service: forgetting finished entries, and what a state retains of them
        RetentionExpired,
        Retained,
        FinishedBatch,
        # inventory: events, and the state for snapshots
        inventory.ProductsStocked,
        inventory.StockReserved,
        inventory.ReservationRejected,
        inventory.StockCommitted,
        inventory.StockReleased,
        inventory.InventoryState,
        inventory.Reservation,
        # payment
        payment.PaymentAuthorized,
        payment.PaymentDeclined,
        payment.PaymentCaptured,
        payment.PaymentVoided,
        payment.Authorization,
        # orders
        orders.OrderPlaced,
        orders.OrderConfirmed,
        orders.OrderCancelled,
        orders.OrderRecord,
    )
    codec.register(payment.PaymentState, version=2, upcast=_captured_totals_summed)
    codec.register(orders.OrdersState, version=2, upcast=_confirmed_totals_summed)
    return codec


def _captured_totals_summed(version: int, fields: dict[str, Any]) -> dict[str, Any]:
    """A version-1 `PaymentState` (every payment ever, no totals): sum its captured payments."""
    totals: dict[str, Decimal] = {}
    count = 0
    for _, authorization in _pairs(fields["authorizations"]):
        if authorization["status"] == "captured":
            count += 1
            _add(totals, authorization["currency"], authorization["amount"])
    return {**fields, "captured_count": count, "captured_total": _tagged_amounts(totals)}


def _confirmed_totals_summed(version: int, fields: dict[str, Any]) -> dict[str, Any]:
    """A version-1 `OrdersState` (every order ever, no totals): sum its confirmed orders."""
    amounts: dict[str, Decimal] = {}
    units: dict[int, int] = {}
    count = 0
    for _, record in _pairs(fields["orders"]):
        if record["state"] != orders.CONFIRMED:
            continue
        placed = record["placed"]
        count += 1
        for item in placed["items"]:
            units[item["product_id"]] = units.get(item["product_id"], 0) + item["quantity"]
        _add(amounts, placed["currency"], placed["amount"])
    return {
        **fields,
        "confirmed_count": count,
        "confirmed_units": {"$dict": [[product, quantity] for product, quantity in units.items()]},
        "confirmed_amounts": _tagged_amounts(amounts),
    }


def _pairs(tagged: dict[str, Any]) -> Iterable[list[Any]]:
    """The [key, value] pairs of a stored dict (`{"$dict": [[key, value], ...]}`)."""
    pairs: list[list[Any]] = tagged["$dict"]
    return pairs


def _add(totals: dict[str, Decimal], currency: str, amount: dict[str, str]) -> None:
    totals[currency] = totals.get(currency, Decimal(0)) + Decimal(amount["$decimal"])


def _tagged_amounts(totals: dict[str, Decimal]) -> dict[str, Any]:
    return {"$dict": [[currency, {"$decimal": str(amount)}] for currency, amount in totals.items()]}
