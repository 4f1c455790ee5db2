"""The vocabulary of supervision, after Erlang/OTP's supervisor.

Restart types (when a child exits):
    PERMANENT  always restarted;
    TRANSIENT  restarted only if it exited abnormally;
    TEMPORARY  never restarted.
Strategies (which children restart with it):
    ONE_FOR_ONE  only the child that exited;
    ONE_FOR_ALL  every child: the others are stopped, then all restart in order;
    REST_FOR_ONE the child and every child started after it.
Intensity: at most `max_restarts` within `within_seconds`; past it the
supervisor stops its children and fails to its own parent (escalation).
Backoff: exponential delay between restarts of one child, as Akka's
`restartWithBackoff` - so a crash loop does not spin, and the intensity
limit measures real trouble rather than raw speed.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import pykka

from saga_actors.supervision.address import Address

__all__ = [
    "ONE_FOR_ALL",
    "ONE_FOR_ONE",
    "PERMANENT",
    "REST_FOR_ONE",
    "TEMPORARY",
    "TRANSIENT",
    "Backoff",
    "ChildSpec",
    "Intensity",
    "RestartWindow",
]

RestartType = Literal["permanent", "transient", "temporary"]
"""When a child is restarted: always, only after an abnormal exit, or never."""
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
"""Which children restart when one exits."""

PERMANENT: Final = "permanent"
TRANSIENT: Final = "transient"
TEMPORARY: Final = "temporary"
ONE_FOR_ONE: Final = "one_for_one"
ONE_FOR_ALL: Final = "one_for_all"
REST_FOR_ONE: Final = "rest_for_one"
RESTART_TYPES: tuple[RestartType, ...] = (PERMANENT, TRANSIENT, TEMPORARY)
STRATEGIES: tuple[Strategy, ...] = (ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE)


@dataclass(frozen=True)
class ChildSpec:
    """How to start (and restart) one child.

    `start` starts a new incarnation and returns its ref; it may block until
    the child is ready and raise if it cannot start. `address`, if given, is
    kept pointing at the current incarnation (the supervisor makes one
    otherwise).
    """

    id: str
    start: Callable[[], pykka.ActorRef[Any]]
    restart: RestartType = PERMANENT
    shutdown_timeout: float = 10.0
    address: Address | None = None

    def __post_init__(self) -> None:
        if self.restart not in RESTART_TYPES:
            raise ValueError(
                f"child {self.id!r}: restart must be one of {RESTART_TYPES}, got {self.restart!r}"
            )


@dataclass(frozen=True)
class Intensity:
    """At most `max_restarts` restarts within `within_seconds` (OTP: 1 in 5 s)."""

    max_restarts: int = 3
    within_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or not self.within_seconds > 0:
            raise ValueError(f"invalid intensity: {self}")


class RestartWindow:
    """The restarts counted against an `Intensity` (one per supervisor; not thread-safe).

    `exceeded(now)` records a restart at `now` (monotonic seconds) and says
    whether there are now more than `max_restarts` within `within_seconds`:
    OTP's "more than MaxR restarts in MaxT seconds", past which a supervisor
    gives up and escalates.
    """

    def __init__(self, intensity: Intensity) -> None:
        self.intensity = intensity
        self._times: collections.deque[float] = collections.deque()

    def exceeded(self, now: float) -> bool:
        times, window = self._times, self.intensity.within_seconds
        times.append(now)
        while times and times[0] < now - window:
            times.popleft()
        return len(times) > self.intensity.max_restarts


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n (n = 0, 1, ...): min(max, min * 2**n), times up to (1 + random_factor).

    The count of consecutive restarts resets when the child had been
    running for `reset_after` seconds before it exited.
    """

    min_backoff: float = 0.01
    max_backoff: float = 1.0
    random_factor: float = 0.2
    reset_after: float = 5.0

    def __post_init__(self) -> None:
        if not (
            0 <= self.min_backoff <= self.max_backoff
            and self.random_factor >= 0
            and self.reset_after >= 0
            and math.isfinite(self.max_backoff)
        ):
            raise ValueError(f"invalid backoff: {self}")

    def delay(self, consecutive: int, rand: float) -> float:
        base = min(self.max_backoff, self.min_backoff * 2 ** min(consecutive, 64))
        return float(base * (1 + self.random_factor * rand))
