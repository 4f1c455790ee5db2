"""The request/reply protocol between a saga and its participants.

A saga sends a `Request` carrying a domain command; the participant answers
with a `Reply` to `reply_to`, echoing the `correlation` so the saga can tell
a current answer from a late one. Participants know nothing else of sagas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from saga_actors.supervision.timer import Recipient

__all__ = ["Correlation", "Reply", "Request", "StepKind"]

StepKind = Literal["do", "undo"]
"""A step's action ("do") or its compensation ("undo")."""


@dataclass(frozen=True, slots=True)
class Correlation:
    saga_id: str
    kind: StepKind  # "do" (a step's action) or "undo" (its compensation)
    step: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Request:
    """A command for a participant.

    `deadline` (seconds on this process's `time.monotonic()` clock, or None)
    is when the sender stops waiting for this attempt: a participant that
    gets the request later refuses it before any effect ("expired", a
    transient failure), as gRPC servers drop calls past their deadline.
    """

    command: Any
    reply_to: Recipient | None
    correlation: Correlation | None = None
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A participant's answer.

    `ok` is success. A failure is `transient` when it was refused before it
    had any effect and may succeed if retried ("unavailable"); otherwise it
    is a business rejection (out of stock, card declined) and final.
    """

    correlation: Correlation | None
    ok: bool
    reason: str | None = None
    transient: bool = False

    @classmethod
    def success(cls, correlation: Correlation | None) -> Reply:
        return cls(correlation, True)

    @classmethod
    def rejected(cls, correlation: Correlation | None, reason: str) -> Reply:
        return cls(correlation, False, reason)

    @classmethod
    def unavailable(cls, correlation: Correlation | None, reason: str = "unavailable") -> Reply:
        return cls(correlation, False, reason, transient=True)
