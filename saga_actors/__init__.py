"""saga-actors: distributed transactions (sagas) on pykka actors.

The public API of the order engine::

    from saga_actors import OrderSystem, FaultPlan, RetryPolicy

    with OrderSystem(stock={101: 10}) as system:
        confirmed = system.place_order(request, timeout=5)

The building blocks live in sub-packages that know nothing of orders:
`saga_actors.sagas` (the saga engine), `saga_actors.supervision` (OTP-style
supervisors), `saga_actors.persistence` (event-sourced journals). The order
application is `saga_actors.actors`.
"""

from saga_actors.actors import (
    FaultPlan,
    IdempotencyConflict,
    InvalidOrder,
    JournalInUse,
    NotAJournal,
    OrderFuture,
    OrderSystem,
    OrderView,
    PaymentView,
    RetryPolicy,
    StockView,
    SystemNotRunning,
)
from saga_actors.actors.system import DEFAULT_RETENTION, RecoveryReport
from saga_actors.persistence import JournalCorrupted

__version__ = "0.4.0"

__all__ = [
    "DEFAULT_RETENTION",
    "FaultPlan",
    "IdempotencyConflict",
    "InvalidOrder",
    "JournalCorrupted",
    "JournalInUse",
    "NotAJournal",
    "OrderFuture",
    "OrderSystem",
    "OrderView",
    "PaymentView",
    "RecoveryReport",
    "RetryPolicy",
    "StockView",
    "SystemNotRunning",
    "__version__",
]
