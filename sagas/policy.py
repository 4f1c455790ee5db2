"""Retry policy: exponential backoff with jitter (Temporal's parameter names)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RetryPolicy"]

_MAX_EXPONENT = 64  # beyond this the interval is capped anyway; avoids float overflow


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How a saga retries a step that failed transiently.

    `maximum_attempts` counts every attempt, the first included. Steps after
    the commit decision, and compensations, ignore it: they are retried
    until they succeed (at `maximum_interval` at most between attempts).
    `attempt_timeout` is how long one attempt may go unanswered before it is
    counted as a transient failure.
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
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                problems.append(f"{name} must be a positive number, got {value!r}")
        coefficient = self.backoff_coefficient
        if not _is_number(coefficient) or not math.isfinite(coefficient) or coefficient < 1:
            problems.append(f"backoff_coefficient must be a number >= 1, got {coefficient!r}")
        attempts = self.maximum_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            problems.append(f"maximum_attempts must be an integer >= 1, got {attempts!r}")
        if not problems and self.maximum_interval < self.initial_interval:
            problems.append("maximum_interval must not be less than initial_interval")
        if problems:
            raise ValueError("invalid RetryPolicy: " + "; ".join(problems))

    def backoff(self, failed_attempt: int, rand: float) -> float:
        """Seconds to wait after attempt number `failed_attempt` failed.

        `rand` is a uniform draw in [0, 1) from the caller's seeded generator;
        the delay is uniform in [d/2, d] where d is the exponential interval
        ("equal jitter": spreads retries out but never retries immediately).
        """
        exponent = min(max(failed_attempt - 1, 0), _MAX_EXPONENT)
        interval = min(
            self.maximum_interval,
            self.initial_interval * self.backoff_coefficient**exponent,
        )
        return interval * (0.5 + 0.5 * rand)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
