"""The order engine: domain actors and the public API.

from saga_actors.actors import OrderSystem, FaultPlan, RetryPolicy

with OrderSystem(stock={101: 10}) as system:
    confirmed = system.place_order(request, timeout=5)
"""

from saga_actors.actors.errors import (
    IdempotencyConflict,
    InvalidOrder,
    JournalInUse,
    NotAJournal,
    SystemNotRunning,
)
from saga_actors.actors.inventory import StockView
from saga_actors.actors.orders import OrderView
from saga_actors.actors.payment import PaymentView
from saga_actors.actors.system import OrderFuture, OrderSystem
from saga_actors.sagas.policy import RetryPolicy
from saga_actors.sagas.remote import RemoteServiceError
from saga_actors.sagas.simulation import FaultPlan

__all__ = [
    "FaultPlan",
    "IdempotencyConflict",
    "InvalidOrder",
    "JournalInUse",
    "NotAJournal",
    "OrderFuture",
    "OrderSystem",
    "OrderView",
    "PaymentView",
    "RemoteServiceError",
    "RetryPolicy",
    "StockView",
    "SystemNotRunning",
]
