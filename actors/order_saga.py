"""The order saga: one definition for the generic saga engine.

    stage 1 (may be rolled back):  reserve_stock  |  authorize_payment
    -- commit decision (pivot) --
    stage 2 (retried until done):  commit_stock  |  capture_payment  |  confirm_order
    on rollback:                   release_stock |  void_payment  |  cancel_order

The critical path is two round trips: the steps of a stage run side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from saga_actors.actors.inventory import CommitStock, ReleaseStock, ReserveStock
from saga_actors.actors.orders import CancelOrder, ConfirmOrder
from saga_actors.actors.payment import AuthorizePayment, CapturePayment, VoidPayment
from saga_actors.actors.validation import OrderItem, OrderRequest
from saga_actors.sagas.definition import SagaContext, SagaDefinition, Step

__all__ = ["ORDER_SAGA", "OrderSagaData"]


@dataclass(frozen=True, slots=True)
class OrderSagaData:
    """What the saga journals about its order: no card number, no CVV."""

    order_id: str
    items: tuple[OrderItem, ...]
    amount: Decimal
    currency: str
    card_last4: str

    @classmethod
    def from_order(cls, order: OrderRequest) -> OrderSagaData:
        return cls(order.order_id, order.items, order.amount, order.currency, order.card.last4)


def _authorize(context: SagaContext) -> AuthorizePayment:
    if context.ephemeral is None:
        # Only a recovered saga lacks the card, and recovery never authorizes.
        raise RuntimeError(f"order {context.saga_id}: card details are not in memory")
    data: OrderSagaData = context.data
    return AuthorizePayment(data.order_id, data.amount, data.currency, context.ephemeral)


ORDER_SAGA = SagaDefinition(
    name="order",
    stages=(
        (
            Step(
                "reserve_stock",
                "inventory",
                action=lambda c: ReserveStock(c.saga_id, c.data.items),
                compensation=lambda c: ReleaseStock(c.saga_id),
            ),
            Step(
                "authorize_payment",
                "payment",
                action=_authorize,
                compensation=lambda c: VoidPayment(c.saga_id),
            ),
        ),
        (
            Step("commit_stock", "inventory", action=lambda c: CommitStock(c.saga_id)),
            Step("capture_payment", "payment", action=lambda c: CapturePayment(c.saga_id)),
            Step("confirm_order", "orders", action=lambda c: ConfirmOrder(c.saga_id)),
        ),
    ),
    pivot=1,
    on_abort=(
        Step("cancel_order", "orders", action=lambda c: CancelOrder(c.saga_id, c.reason or "aborted")),
    ),
)
