"""The errors an application sees."""

from __future__ import annotations

from saga_actors.persistence.journal import JournalInUse

__all__ = ["IdempotencyConflict", "InvalidOrder", "JournalInUse", "SystemNotRunning"]


class InvalidOrder(ValueError):
    """The request is malformed; `problems` lists each problem as "path: why".

    Raised before anything changes. Card numbers and CVVs are never quoted.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid order: " + "; ".join(self.problems))


class IdempotencyConflict(Exception):
    """An order id was reused for a request with different content."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        super().__init__(
            f"order {order_id!r} was already placed with different content; "
            "use a new order id for a new order"
        )


class SystemNotRunning(RuntimeError):
    """The order system is not started, or stopped before the outcome was known."""
