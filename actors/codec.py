"""Which types the order system's journal may hold.

Commands are absent on purpose: `AuthorizePayment` carries the card, and a
journal refuses any type not listed here.
"""

from __future__ import annotations

from saga_actors.actors import inventory, orders, payment
from saga_actors.actors.order_saga import OrderSagaData
from saga_actors.actors.retention import FinishedBatch, Retained, RetentionExpired
from saga_actors.actors.validation import OrderItem
from saga_actors.persistence.serialization import EventCodec
from saga_actors.sagas.engine import DURABLE_EVENTS

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
        payment.PaymentState,
        payment.Authorization,
        # orders
        orders.OrderPlaced,
        orders.OrderConfirmed,
        orders.OrderCancelled,
        orders.OrdersState,
        orders.OrderRecord,
    )
    return codec
