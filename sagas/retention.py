"""Retention: what a service keeps of finished work, and when it forgets it.

A service's state holds what is active (open reservations, authorizations
not yet captured or voided, orders in flight) plus the entries that
finished within the *retention window*: a repeated request still gets its
first answer, and a late one (a reserve arriving after its release) is
still refused. Past the window a finished entry is forgotten, so memory
and snapshots cost what the work in hand costs, not what history costs.

Time enters only through the journal: the actor decides, every expiry
period, on `ExpireRetention(now, retention)`, and the rules turn that into
one journaled event, `RetentionExpired(at, before)`. Replaying the journal
therefore rebuilds exactly the state the live actor had, whatever the clock
says during the replay.

No finish time is stored per entry. Entries that finish are collected in
`Retained.unbatched`; each `RetentionExpired` closes that collection into a
`FinishedBatch` stamped with its `at` (every entry in it finished before
then) and forgets the batches stamped at or before its `before` (`at`
minus the retention). An entry is kept at least the retention and at most
the retention plus one expiry period; a batch per period, so about eleven
batches in all. The stamps come from the wall clock: a clock stepped back
delays forgetting, one stepped forward hastens it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "MAX_EXPIRY_PERIOD",
    "MIN_EXPIRY_PERIOD",
    "ExpireRetention",
    "FinishedBatch",
    "Retained",
    "RetentionExpired",
    "expiry_period",
]

MIN_EXPIRY_PERIOD = 1.0  # seconds
MAX_EXPIRY_PERIOD = 3600.0  # seconds


def expiry_period(retention: float) -> float:
    """Seconds between two expiries for a `retention` in seconds: a tenth of it, within [1 s, 1 h]."""
    return min(max(retention / 10, MIN_EXPIRY_PERIOD), MAX_EXPIRY_PERIOD)


@dataclass(frozen=True, slots=True)
class ExpireRetention:
    """Command: forget the entries that finished more than `retention` seconds before `now`
    - and before `in_flight_since`, if given.

    `now` is epoch seconds (`time.time()`), `retention` seconds (> 0).
    `in_flight_since` (epoch seconds) is when the oldest saga still in flight
    was placed (0 when it is not known, e.g. a saga recovered at start): an
    entry that finished after it may belong to a saga that still asks about
    it (a retry whose first attempt took effect, its reply lost), so it is
    never forgotten while that saga runs, however short the retention.
    """

    now: float
    retention: float
    in_flight_since: float | None = None


@dataclass(frozen=True, slots=True)
class RetentionExpired:
    """Event: entries that finished since the previous one are stamped `at`, and the
    entries stamped at or before `before` are forgotten. Both in epoch seconds."""

    at: float
    before: float


@dataclass(frozen=True, slots=True)
class FinishedBatch:
    """Entries (by key: an order id, a saga id) that finished before `finished_by` (epoch seconds)."""

    finished_by: float
    ids: tuple[str, ...]


@dataclass(slots=True)
class Retained:
    """The finished entries a state still holds, grouped by when they finished at the latest."""

    unbatched: set[str] = field(default_factory=set)  # finished since the last RetentionExpired
    batches: tuple[FinishedBatch, ...] = ()  # oldest first

    def finish(self, key: str) -> None:
        """`key`'s entry has finished (it will not change again): it may be forgotten later."""
        self.unbatched.add(key)

    def expire(self, command: ExpireRetention) -> list[RetentionExpired]:
        """The rule: one `RetentionExpired` if anything is to be stamped or forgotten, else none."""
        before = command.now - command.retention
        if command.in_flight_since is not None:
            before = min(before, command.in_flight_since)
        if self.unbatched or any(batch.finished_by <= before for batch in self.batches):
            return [RetentionExpired(command.now, before)]
        return []

    def forget(self, event: RetentionExpired) -> list[str]:
        """Apply `event`; return the keys whose entries the state must now drop."""
        batches = self.batches
        if self.unbatched:
            # Sorted: the batch must not depend on a set's (hash-seeded) order,
            # so that a replay in another process builds an equal state.
            batches += (FinishedBatch(event.at, tuple(sorted(self.unbatched))),)
            self.unbatched = set()
        self.batches = tuple(batch for batch in batches if batch.finished_by > event.before)
        return [key for batch in batches if batch.finished_by <= event.before for key in batch.ids]

    def copy(self) -> Retained:
        """A copy that later changes to this one do not reach (the batches are immutable)."""
        return Retained(set(self.unbatched), self.batches)

    def __len__(self) -> int:
        return len(self.unbatched) + sum(len(batch.ids) for batch in self.batches)
