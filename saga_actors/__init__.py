"""saga-actors: distributed transactions (sagas) on pykka actors.

The order engine::

    from saga_actors import OrderSystem, FaultPlan, RetryPolicy

    with OrderSystem(stock={101: 10}) as system:
        confirmed = system.place_order(request, timeout=5)

Your own sagas over your own participants (see `saga_actors.examples.trip`)::

    from saga_actors import Participant, SagaDefinition, SagaRuntime, Step

    with SagaRuntime(MY_SAGA, participants=[...], journal="my.db") as runtime:
        outcome = runtime.run("saga-1", my_data, timeout=10)

The building blocks live in sub-packages that know nothing of orders:
`saga_actors.sagas` (the saga engine, its runtime and the participant
shell), `saga_actors.supervision` (OTP-style supervisors),
`saga_actors.persistence` (event-sourced journals). The order application
is `saga_actors.actors`; `saga_actors.examples` holds a second one.
"""

import logging

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
    RemoteServiceError,
    RetryPolicy,
    StockView,
    SystemNotRunning,
)
from saga_actors.actors.system import DEFAULT_RETENTION, RecoveryReport
from saga_actors.persistence import EventCodec, JournalCorrupted, LeaseLost
from saga_actors.sagas.cluster import LeaseUnavailable
from saga_actors.sagas.definition import SagaContext, SagaDefinition, Step
from saga_actors.sagas.participant import ParticipantActor
from saga_actors.sagas.runtime import (
    Participant,
    ParticipantContext,
    Resource,
    RuntimeRecovery,
    SagaConflict,
    SagaFuture,
    SagaOutcome,
    SagaRuntime,
)

__version__ = "0.6.0"

# A library logs; the application decides where it goes. Without this, Python's last-resort
# handler would print the engine's warnings (a fault drill, a crashed participant) on stderr.
logging.getLogger("saga_actors").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_RETENTION",
    "EventCodec",
    "FaultPlan",
    "IdempotencyConflict",
    "InvalidOrder",
    "JournalCorrupted",
    "JournalInUse",
    "LeaseLost",
    "LeaseUnavailable",
    "NotAJournal",
    "OrderFuture",
    "OrderSystem",
    "OrderView",
    "Participant",
    "ParticipantActor",
    "ParticipantContext",
    "PaymentView",
    "RecoveryReport",
    "RemoteServiceError",
    "Resource",
    "RetryPolicy",
    "RuntimeRecovery",
    "SagaConflict",
    "SagaContext",
    "SagaDefinition",
    "SagaFuture",
    "SagaOutcome",
    "SagaRuntime",
    "Step",
    "StockView",
    "SystemNotRunning",
    "__version__",
]
