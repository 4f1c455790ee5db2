"""Supervision trees for pykka actors, after Erlang/OTP's supervisor.

Generic: nothing here knows about orders. A `Supervisor` starts children
from `ChildSpec`s, learns when one exits (`Monitored`), and restarts it by
its restart type and the supervisor's strategy, with backoff, within an
intensity limit past which it escalates to its own parent. An `Address`
reaches whichever incarnation of a child is current.
"""

from saga_actors.supervision.address import Address
from saga_actors.supervision.monitor import Kill, Killed, Monitored, kill, start_monitored
from saga_actors.supervision.resource import FailureReport, ResourceActor, ResourceFailed
from saga_actors.supervision.spec import (
    ONE_FOR_ALL,
    ONE_FOR_ONE,
    PERMANENT,
    REST_FOR_ONE,
    TEMPORARY,
    TRANSIENT,
    Backoff,
    ChildSpec,
    Intensity,
    RestartWindow,
)
from saga_actors.supervision.supervisor import (
    AddChild,
    Escalated,
    StartChild,
    Supervisor,
    WhichChildren,
    start_supervisor,
)
from saga_actors.supervision.timer import Timer, TimerHandle

__all__ = [
    "ONE_FOR_ALL",
    "ONE_FOR_ONE",
    "PERMANENT",
    "REST_FOR_ONE",
    "TEMPORARY",
    "TRANSIENT",
    "AddChild",
    "Address",
    "Backoff",
    "ChildSpec",
    "Escalated",
    "FailureReport",
    "Intensity",
    "Kill",
    "Killed",
    "Monitored",
    "ResourceActor",
    "ResourceFailed",
    "RestartWindow",
    "StartChild",
    "Supervisor",
    "Timer",
    "TimerHandle",
    "WhichChildren",
    "kill",
    "start_monitored",
    "start_supervisor",
]
