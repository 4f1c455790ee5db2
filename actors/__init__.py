"""The order engine: domain actors and the public API.

    from actors import OrderSystem, FaultPlan, RetryPolicy

    with OrderSystem(stock={101: 10}) as system:
        confirmed = system.place_order(request, timeout=5)
"""

from actors.errors import IdempotencyConflict, InvalidOrder, SystemNotRunning
from actors.inventory import StockView
from actors.orders import OrderView
from actors.payment import PaymentView
from actors.simulation import FaultPlan
from actors.system import OrderFuture, OrderSystem
from sagas.policy import RetryPolicy

__all__ = [
    "FaultPlan",
    "IdempotencyConflict",
    "InvalidOrder",
    "OrderFuture",
    "OrderSystem",
    "OrderView",
    "PaymentView",
    "RetryPolicy",
    "StockView",
    "SystemNotRunning",
]
