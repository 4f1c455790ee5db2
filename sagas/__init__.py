"""A generic saga engine on pykka actors.

A saga definition is stages of steps (action + compensation) with a pivot;
`sagas.engine` is its state machine as pure functions, `sagas.host` runs
many saga actors on a few threads, `sagas.runtime` is the public runtime
(supervision tree, journal, recovery, idempotent start, waiting), and
`sagas.participant` the shell that makes a participant out of three pure
functions, and `sagas.remote` a participant that is a service elsewhere
(HTTP; the optional extra `http`). Delays are messages scheduled on `supervision.timer`. Nothing
here knows about orders.
"""

from saga_actors.sagas.definition import SagaContext, SagaDefinition, Step
from saga_actors.sagas.host import SagaFinished, SagaHost, SagaHosts, SagaRef, SagaSpec
from saga_actors.sagas.metrics import Metrics
from saga_actors.sagas.participant import ParticipantActor
from saga_actors.sagas.policy import RetryPolicy
from saga_actors.sagas.protocol import Correlation, Reply, Request
from saga_actors.sagas.runtime import (
    Participant,
    ParticipantContext,
    Resource,
    RuntimeRecovery,
    SagaConflict,
    SagaFuture,
    SagaOutcome,
    SagaRegistry,
    SagaRuntime,
    SystemNotRunning,
)
from saga_actors.sagas.simulation import FaultPlan

__all__ = [
    "Correlation",
    "FaultPlan",
    "Metrics",
    "Participant",
    "ParticipantActor",
    "ParticipantContext",
    "Reply",
    "Request",
    "Resource",
    "RetryPolicy",
    "RuntimeRecovery",
    "SagaConflict",
    "SagaContext",
    "SagaDefinition",
    "SagaFinished",
    "SagaFuture",
    "SagaHost",
    "SagaHosts",
    "SagaOutcome",
    "SagaRef",
    "SagaRegistry",
    "SagaRuntime",
    "SagaSpec",
    "Step",
    "SystemNotRunning",
]
