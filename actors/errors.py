"""The errors an application sees."""

from __future__ import annotations

from saga_actors.persistence.journal import JournalInUse
from saga_actors.persistence.sqlite import NotAJournal
from saga_actors.sagas.redaction import mask_digits as mask_digits  # the actors use it from here
from saga_actors.sagas.runtime import SagaConflict, SystemNotRunning

__all__ = ["IdempotencyConflict", "InvalidOrder", "JournalInUse", "NotAJournal", "SystemNotRunning"]


class InvalidOrder(ValueError):
    """The request is malformed; `problems` lists each problem as "path: why".

    Raised before anything changes. Card numbers and CVVs are never quoted.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid order: " + "; ".join(self.problems))


class IdempotencyConflict(SagaConflict):
    """An order id was reused for a request with different content (the order's saga id is
    its order id, so it is a `SagaConflict` too)."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        shown = mask_digits(order_id)  # an order id may hold a card number
        super().__init__(
            order_id,
            f"order {shown!r} was already placed with different content; use a new order id for a new order",
        )
