"""Simulated unreliable services: seeded faults and latency on the wire.

The inventory and payment services are simulations we control, so that the
orchestration - which is real - can be tested against unreliable
participants. Every random choice comes from one seeded generator per
service, which lives outside the service actor: a restarted actor carries on
with the same sequence instead of replaying the fault that killed it.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import Any

from saga_actors.sagas.policy import is_finite_number, show_parameter
from saga_actors.supervision.timer import Recipient, Timer

__all__ = ["MAX_LATENCY", "FaultInjector", "FaultPlan", "SimulatedCrash", "SimulatedLink"]

logger = logging.getLogger(__name__)

MAX_LATENCY = 3600.0  # seconds: an hour on the wire is already absurd

OK, UNAVAILABLE, CRASH_BEFORE, CRASH_AFTER = "ok", "unavailable", "crash-before", "crash-after"


class SimulatedCrash(Exception):
    """Raised inside a service actor to make it die, as a real crash would."""


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """How unreliable one simulated service is.

    failure_rate: chance that a call is refused as "temporarily unavailable"
        before it has any effect.
    crash_rate: chance that handling a call crashes the service actor - half
        of them before the call takes effect, half after it, before the reply.
    min_latency, max_latency: each call spends uniform[min, max] seconds on
        the wire before it reaches the service.
    seed: seeds the generator; None picks one at random (and logs it).

    Accepted ranges (anything else raises ValueError naming every problem;
    numbers are ints or floats, not bools, NaN or infinities): rates in
    [0, 1] with failure_rate + crash_rate <= 1; latencies in [0, 3600]
    seconds (`MAX_LATENCY`) with min_latency <= max_latency; seed None or an
    int in [0, 2**64).
    """

    failure_rate: float = 0.0
    crash_rate: float = 0.0
    min_latency: float = 0.0
    max_latency: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("failure_rate", "crash_rate"):
            value = getattr(self, name)
            if not (is_finite_number(value) and 0 <= value <= 1):
                problems.append(f"{name} must be a number in [0, 1], got " + show_parameter(value))
        for name in ("min_latency", "max_latency"):
            value = getattr(self, name)
            if not (is_finite_number(value) and 0 <= value <= MAX_LATENCY):
                problems.append(
                    f"{name} must be a number of seconds in [0, 3600], got {show_parameter(value)}"
                )
        if not problems and self.failure_rate + self.crash_rate > 1:
            problems.append("failure_rate + crash_rate must not exceed 1")
        if not problems and self.max_latency < self.min_latency:
            problems.append("max_latency must not be less than min_latency")
        seed = self.seed
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64
        ):
            problems.append("seed must be None or an integer in [0, 2**64), got " + show_parameter(seed))
        if problems:
            raise ValueError("invalid FaultPlan: " + "; ".join(problems))


class FaultInjector:
    """The seeded dice of one simulated service (thread-safe)."""

    def __init__(self, plan: FaultPlan, name: str) -> None:
        self.plan = plan
        self.name = name
        self.seed = plan.seed if plan.seed is not None else random.SystemRandom().randrange(2**32)
        if plan.seed is None and (plan.failure_rate or plan.crash_rate or plan.max_latency):
            logger.info("%s: faults seeded with %d (pass seed=%d to replay)", name, self.seed, self.seed)
        self._random = random.Random(f"{name}:{self.seed}")
        self._lock = threading.Lock()

    def latency(self) -> float:
        plan = self.plan
        if plan.max_latency <= 0:
            return 0.0
        with self._lock:
            return self._random.uniform(plan.min_latency, plan.max_latency)

    def fate(self) -> str:
        """What happens to the next call: ok, unavailable, or a crash before/after its effect."""
        plan = self.plan
        if plan.failure_rate <= 0 and plan.crash_rate <= 0:
            return OK
        with self._lock:
            draw = self._random.random()
            if draw < plan.failure_rate:
                return UNAVAILABLE
            if draw < plan.failure_rate + plan.crash_rate:
                return CRASH_BEFORE if self._random.random() < 0.5 else CRASH_AFTER
            return OK


class SimulatedLink:
    """The wire to a service: delivers each message after a simulated latency.

    Latency is time on the wire, not time in the service: the service keeps
    serving other calls meanwhile, and messages may overtake each other.
    """

    def __init__(self, target: Recipient, faults: FaultInjector, timer: Timer) -> None:
        self._target = target
        self._faults = faults
        self._timer = timer

    def tell(self, message: Any) -> None:
        delay = self._faults.latency()
        if delay > 0:
            self._timer.schedule(delay, self._target, message)
        else:
            self._target.tell(message)
