"""Retry policy: exponential backoff with jitter (Temporal's parameter names)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_BACKOFF_COEFFICIENT",
    "MAX_SECONDS",
    "RetryPolicy",
    "is_finite_number",
    "show_parameter",
]

MAX_SECONDS = 86_400.0  # one day: the longest interval or attempt timeout
MAX_BACKOFF_COEFFICIENT = 100.0
MAX_ATTEMPTS = 10_000
_MAX_EXPONENT = 2**1000  # converts to a float; far beyond any real attempt number
_SAFE_LOG = 700.0  # exp(700) is about 1e304, below the largest float


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How a saga retries a step that failed transiently.

    `maximum_attempts` counts every attempt, the first included. Steps after
    the commit decision, and compensations, ignore it: they are retried
    until they succeed (at `maximum_interval` at most between attempts).
    `attempt_timeout` is how long one attempt may go unanswered before it is
    counted as a transient failure.

    Accepted ranges (anything else raises ValueError naming every problem;
    numbers are ints or floats, not bools, NaN or infinities):

    - `initial_interval`, `maximum_interval`, `attempt_timeout`: seconds in
      (0, 86400] (`MAX_SECONDS`), with `maximum_interval >= initial_interval`;
    - `backoff_coefficient`: in [1, 100] (`MAX_BACKOFF_COEFFICIENT`);
    - `maximum_attempts`: an int in [1, 10000] (`MAX_ATTEMPTS`).
    """

    initial_interval: float = 0.05
    backoff_coefficient: float = 2.0
    maximum_interval: float = 2.0
    maximum_attempts: int = 8
    attempt_timeout: float = 2.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("initial_interval", "maximum_interval", "attempt_timeout"):
            value = getattr(self, name)
            if not (is_finite_number(value) and 0 < value <= MAX_SECONDS):
                problems.append(
                    f"{name} must be a number of seconds in (0, 86400], got {show_parameter(value)}"
                )
        coefficient = self.backoff_coefficient
        if not (is_finite_number(coefficient) and 1 <= coefficient <= MAX_BACKOFF_COEFFICIENT):
            problems.append(
                f"backoff_coefficient must be a number in [1, 100], got {show_parameter(coefficient)}"
            )
        attempts = self.maximum_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= MAX_ATTEMPTS:
            problems.append(
                f"maximum_attempts must be an integer in [1, 10000], got {show_parameter(attempts)}"
            )
        if not problems and self.maximum_interval < self.initial_interval:
            problems.append("maximum_interval must not be less than initial_interval")
        if problems:
            raise ValueError("invalid RetryPolicy: " + "; ".join(problems))

    def backoff(self, failed_attempt: int, rand: float) -> float:
        """Seconds to wait after attempt number `failed_attempt` failed.

        `rand` is a uniform draw in [0, 1) from the caller's seeded generator;
        the delay is uniform in [d/2, d] where d is the exponential interval
        ("equal jitter": spreads retries out but never retries immediately).
        d is min(maximum_interval, initial_interval * coefficient**(failed_attempt - 1)),
        computed so that it cannot overflow, for any attempt number.
        """
        exponent = min(max(failed_attempt - 1, 0), _MAX_EXPONENT)
        initial, ceiling = self.initial_interval, self.maximum_interval
        growth = math.log(self.backoff_coefficient)  # >= 0
        room = math.log(ceiling) - math.log(initial)  # >= 0: how far the interval may grow
        # Decided in log space, so that no power is taken that could overflow.
        if exponent == 0 or growth == 0:
            interval = initial
        elif exponent * growth >= room:
            interval = ceiling
        elif exponent * growth < _SAFE_LOG:
            interval = initial * self.backoff_coefficient**exponent
        else:  # a tiny initial interval: the power alone would overflow
            interval = math.exp(math.log(initial) + exponent * growth)
        return min(ceiling, interval) * (0.5 + 0.5 * rand)


def is_finite_number(value: object) -> bool:
    """An int or a finite float (not a bool)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def show_parameter(value: object) -> str:
    """A short rendering of a parameter for an error message (never a huge int's digits)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return int.__repr__(value) if int.bit_length(value) <= 64 else "an integer too large to show"
    if isinstance(value, float):
        return float.__repr__(value)
    return type(value).__name__
