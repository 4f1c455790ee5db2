"""The order saga: one definition for the generic saga engine.

    stage 1 (may be rolled back):  reserve_stock  |  authorize_payment
    -- commit decision (pivot) --
    stage 2 (retried until done):  commit_stock  |  capture_payment  |  confirm_order
    on rollback:                   release_stock |  void_payment  |  cancel_order

The critical path is two round trips: the steps of a stage run side by side.

Each order's saga journals in its own stream, `saga:order:<order_id>`: the
order's data (`OrderSagaData`, fingerprint included) in `SagaStarted`, then
the commit or rollback decision and the end. That stream is the order's
durable record once the order service has forgotten it (`journaled_order`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from saga_actors.actors.inventory import CommitStock, ReleaseStock, ReserveStock
from saga_actors.actors.orders import (
    CANCELLED,
    CONFIRMED,
    PENDING,
    CancelOrder,
    ConfirmOrder,
    JournaledOrder,
    OrderPlaced,
    OrderState,
    OrderView,
)
from saga_actors.actors.payment import AuthorizePayment, CapturePayment, VoidPayment
from saga_actors.actors.validation import OrderItem, OrderRequest
from saga_actors.persistence.journal import Journal
from saga_actors.sagas.definition import SagaContext, SagaDefinition, Step
from saga_actors.sagas.engine import SagaState, evolve
from saga_actors.sagas.host import saga_persistence_id

__all__ = ["ORDER_SAGA", "OrderSagaData", "journaled_order"]


@dataclass(frozen=True, slots=True)
class OrderSagaData:
    """What the saga journals about its order: no card number, no CVV.

    `fingerprint` is the order's `OrderRequest.fingerprint()`, so that a
    repeat of an order the order service has forgotten can still be told
    from a conflict; "" in sagas journaled before 0.4.0 (stored records
    without the field read back with this default).
    """

    order_id: str
    items: tuple[OrderItem, ...]
    amount: Decimal
    currency: str
    card_last4: str
    fingerprint: str = ""

    @classmethod
    def from_placed(cls, placed: OrderPlaced) -> OrderSagaData:
        """What the saga of a journaled placement would have journaled (recovery writes it)."""
        return cls(
            placed.order_id,
            placed.items,
            placed.amount,
            placed.currency,
            placed.card_last4,
            placed.fingerprint,
        )

    @classmethod
    def from_order(cls, order: OrderRequest) -> OrderSagaData:
        return cls(
            order.order_id, order.items, order.amount, order.currency, order.card.last4, order.fingerprint()
        )


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


def journaled_order(journal: Journal, order_id: str) -> JournaledOrder | None:
    """The order as its saga's stream holds it (one indexed read, by persistence id), or None
    if it has no saga.

    Its state: `confirmed` once the commit decision is journaled (the steps
    after it, confirming the order among them, are retried until done),
    `cancelled` with the rollback's reason once the rollback is decided,
    `pending` before either. Raises what `journal.replay` raises
    (`JournalCorrupted` for a stream that cannot be read).
    """
    state = SagaState()
    for stored in journal.replay(saga_persistence_id(ORDER_SAGA, order_id)):
        state = evolve(ORDER_SAGA, state, stored.event)
    data = state.data
    if not isinstance(data, OrderSagaData):
        return None  # no saga began (nothing journaled)
    status: OrderState
    if state.committed:
        status, reason = CONFIRMED, None
    elif state.phase in ("aborting", "done"):
        status, reason = CANCELLED, state.reason
    else:
        status, reason = PENDING, None
    view = OrderView(order_id, status, reason, data.amount, data.items)
    return JournaledOrder(view, data.currency, data.card_last4, data.fingerprint)
