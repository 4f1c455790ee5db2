"""A generic saga engine on pykka actors.

A saga definition is stages of steps (action + compensation) with a pivot;
`sagas.engine` is its state machine as pure functions, `sagas.host` runs
many saga actors on a few threads. Delays are messages scheduled on `supervision.timer`.
Nothing here knows about orders.
"""

from saga_actors.sagas.definition import SagaContext, SagaDefinition, Step
from saga_actors.sagas.host import SagaFinished, SagaHost, SagaHosts, SagaRef, SagaSpec
from saga_actors.sagas.metrics import Metrics
from saga_actors.sagas.policy import RetryPolicy
from saga_actors.sagas.protocol import Correlation, Reply, Request

__all__ = [
    "Correlation",
    "Metrics",
    "Reply",
    "Request",
    "RetryPolicy",
    "SagaContext",
    "SagaDefinition",
    "SagaFinished",
    "SagaHost",
    "SagaHosts",
    "SagaRef",
    "SagaSpec",
    "Step",
]
