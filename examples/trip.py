"""A second application of the saga runtime: booking a trip (flight, hotel, car).

    python -m saga_actors.examples.trip                      # 20 trips against flaky services
    python -m saga_actors.examples.trip --journal trips.db   # durable: run it again, kill it
    python -m saga_actors.examples.trip --help

Nothing here is about orders. A trip holds a seat, a room and a car, each
with its cancellation; once all three are held the trip is decided (the
pivot) and the three holds are confirmed, retried until they are::

    stage 1 (may be rolled back):  hold_flight   | hold_hotel   | hold_car
    -- commit decision (pivot) --
    stage 2 (retried until done):  confirm_flight | confirm_hotel | confirm_car
    on rollback:                   release_flight | release_hotel | release_car

The three services are one class of participant, `BookingService`, with
three journal streams: a hold is a semantic lock on one unit of an item (a
seat on a flight, a room in a hotel, a car of a class) until it is confirmed
or released. Its rules are pure functions (`decide`, `evolve`, `answer`),
tested without threads; `ParticipantActor` makes them an idempotent,
event-sourced, supervised actor.

The capacity of each item is configuration, not history: it is the initial
state of each service, so change it only between runs on a fresh journal.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from saga_actors._cli import (
    StopRequest,
    error,
    journal_problem,
    new_lock_file,
    number,
    open_problem,
    plural,
    remove_stray_lock,
    run_stoppable,
    whole_number,
)
from saga_actors.persistence.journal import JournalWithSnapshots
from saga_actors.persistence.serialization import EventCodec
from saga_actors.sagas.definition import SagaDefinition, Step
from saga_actors.sagas.participant import Answer, GetState, ParticipantActor
from saga_actors.sagas.policy import RetryPolicy
from saga_actors.sagas.retention import ExpireRetention, FinishedBatch, Retained, RetentionExpired
from saga_actors.sagas.runtime import Participant, SagaFuture, SagaOutcome, SagaRuntime
from saga_actors.sagas.simulation import FaultPlan

__all__ = [
    "DEFAULT_CAPACITY",
    "SERVICES",
    "TRIP_SAGA",
    "Booking",
    "BookingService",
    "BookingState",
    "Confirm",
    "Confirmed",
    "GetBookings",
    "Held",
    "Hold",
    "HoldRefused",
    "Release",
    "Released",
    "TripRequest",
    "answer",
    "check_trips",
    "decide",
    "evolve",
    "main",
    "trip_codec",
    "trip_runtime",
]

SOLD_OUT = "sold_out"
UNKNOWN_ITEM = "unknown_item"

# --- the saga's data (journaled with the saga) ---


@dataclass(frozen=True, slots=True)
class TripRequest:
    """One trip: which flight, hotel and car class (item names the services know)."""

    traveller: str
    flight: str
    hotel: str
    car: str


# --- commands (one set for the three services) ---


@dataclass(frozen=True, slots=True)
class Hold:
    """Hold one unit of `item` for `trip_id` (a seat, a room, a car)."""

    trip_id: str
    item: str


@dataclass(frozen=True, slots=True)
class Release:
    """Give the trip's hold back (its compensation); releasing what was never held leaves a
    tombstone, so that a late `Hold` for the trip is refused."""

    trip_id: str


@dataclass(frozen=True, slots=True)
class Confirm:
    """Make the trip's hold final (after the commit decision)."""

    trip_id: str


@dataclass(frozen=True, slots=True)
class GetBookings:
    """Query: `{trip_id: Booking}` of the bookings active or finished within the retention window."""


# --- events ---


@dataclass(frozen=True, slots=True)
class Held:
    trip_id: str
    item: str


@dataclass(frozen=True, slots=True)
class HoldRefused:
    trip_id: str
    item: str
    reason: str


@dataclass(frozen=True, slots=True)
class Released:
    trip_id: str


@dataclass(frozen=True, slots=True)
class Confirmed:
    trip_id: str


# --- state ---

BookingStatus = Literal["held", "confirmed", "released", "refused"]


@dataclass(frozen=True, slots=True)
class Booking:
    """One trip's booking at one service; immutable (a change replaces it)."""

    item: str
    status: BookingStatus
    reason: str | None = None


@dataclass(slots=True)
class BookingState:
    """Capacity per item (configuration), units taken per item (held or confirmed), and the
    bookings active or finished within the retention window, by trip id."""

    capacity: dict[str, int] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)
    bookings: dict[str, Booking] = field(default_factory=dict)
    retained: Retained = field(default_factory=Retained)

    def copy(self) -> BookingState:
        return BookingState(dict(self.capacity), dict(self.taken), dict(self.bookings), self.retained.copy())


# --- rules: pure functions over plain data ---


def decide(command: Any, state: BookingState) -> list[Any]:
    """The events `command` brings about (none for a repeat: it gets its first answer)."""
    match command:
        case Hold(trip_id=trip_id, item=item):
            if trip_id in state.bookings:
                return []
            if item not in state.capacity:
                return [HoldRefused(trip_id, item, UNKNOWN_ITEM)]
            if state.taken.get(item, 0) >= state.capacity[item]:
                return [HoldRefused(trip_id, item, SOLD_OUT)]
            return [Held(trip_id, item)]
        case Release(trip_id=trip_id):
            return [Released(trip_id)] if _status(state, trip_id) in ("held", None) else []
        case Confirm(trip_id=trip_id):
            return [Confirmed(trip_id)] if _status(state, trip_id) == "held" else []
        case ExpireRetention():
            return state.retained.expire(command)
    raise TypeError(f"booking: unknown command {type(command).__name__}")


def answer(command: Any, state: BookingState) -> Answer:
    """(ok, reason) for `command`, read from the state after its events."""
    status = _status(state, command.trip_id)
    match command:
        case Hold(trip_id=trip_id):
            if status in ("held", "confirmed"):
                return True, None
            if status == "refused":
                return False, state.bookings[trip_id].reason
            return False, "released"
        case Release():
            return (False, "already_confirmed") if status == "confirmed" else (True, None)
        case Confirm():
            return (True, None) if status == "confirmed" else (False, f"not_held ({status})")
    raise TypeError(f"booking: unknown command {type(command).__name__}")


def evolve(state: BookingState, event: Any) -> BookingState:
    match event:
        case Held(trip_id=trip_id, item=item):
            state.taken[item] = state.taken.get(item, 0) + 1
            state.bookings[trip_id] = Booking(item, "held")
        case HoldRefused(trip_id=trip_id, item=item, reason=reason):
            state.bookings[trip_id] = Booking(item, "refused", reason)
            state.retained.finish(trip_id)
        case Released(trip_id=trip_id):
            held = state.bookings.get(trip_id)
            if held is None:
                state.bookings[trip_id] = Booking("", "released")  # a tombstone
            else:
                state.taken[held.item] -= 1
                state.bookings[trip_id] = Booking(held.item, "released")
            state.retained.finish(trip_id)
        case Confirmed(trip_id=trip_id):
            state.bookings[trip_id] = Booking(state.bookings[trip_id].item, "confirmed")
            state.retained.finish(trip_id)
        case RetentionExpired():
            for trip_id in state.retained.forget(event):
                state.bookings.pop(trip_id, None)
        case _:
            raise TypeError(f"booking: unknown event {type(event).__name__}")
    return state


def _status(state: BookingState, trip_id: str) -> str | None:
    booking = state.bookings.get(trip_id)
    return booking.status if booking is not None else None


# --- the participants ---


class BookingService(ParticipantActor[BookingState]):
    """A flight, hotel or car service: holds, confirms and releases units of its items.

    Subclasses name the journal stream (`PERSISTENCE_ID`); `capacity` is
    `{item: units}`. Runs in its own pykka thread; every handler below runs
    there.
    """

    def __init__(self, *args: Any, capacity: Mapping[str, int], **kwargs: Any) -> None:
        self._capacity = dict(capacity)
        super().__init__(*args, **kwargs)

    def initial_state(self) -> BookingState:
        return BookingState(capacity=dict(self._capacity))

    def state_size(self, state: BookingState) -> int:
        return len(state.bookings)

    def apply_event(self, state: BookingState, event: Any) -> BookingState:
        return evolve(state, event)

    def decide(self, command: Any, state: BookingState) -> list[Any]:
        return decide(command, state)

    def answer(self, command: Any, state: BookingState) -> Answer:
        return answer(command, state)

    def on_other_message(self, message: Any) -> Any:
        if isinstance(message, GetBookings):
            return dict(self.state.bookings)
        return super().on_other_message(message)


class Flights(BookingService):
    PERSISTENCE_ID = "flights"


class Hotels(BookingService):
    PERSISTENCE_ID = "hotels"


class Cars(BookingService):
    PERSISTENCE_ID = "cars"


SERVICES: dict[str, type[BookingService]] = {"flights": Flights, "hotels": Hotels, "cars": Cars}

# --- the saga ---


def _step(service: str, name: str, item: str) -> tuple[Step, Step]:
    """The hold (with its release) and the confirmation of one service."""
    hold = Step(
        f"hold_{name}",
        service,
        action=lambda c: Hold(c.saga_id, getattr(c.data, item)),
        compensation=lambda c: Release(c.saga_id),
    )
    return hold, Step(f"confirm_{name}", service, action=lambda c: Confirm(c.saga_id))


_FLIGHT = _step("flights", "flight", "flight")
_HOTEL = _step("hotels", "hotel", "hotel")
_CAR = _step("cars", "car", "car")

TRIP_SAGA = SagaDefinition(
    name="trip",
    stages=((_FLIGHT[0], _HOTEL[0], _CAR[0]), (_FLIGHT[1], _HOTEL[1], _CAR[1])),
    pivot=1,
)

DEFAULT_CAPACITY: dict[str, dict[str, int]] = {
    "flights": {"LH123": 12, "BA456": 6},
    "hotels": {"Adlon": 10, "Savoy": 5},
    "cars": {"compact": 10, "van": 4},
}


def trip_codec() -> EventCodec:
    """The types the trip journal may hold (the runtime adds the saga engine's own)."""
    codec = EventCodec()
    codec.register_all(
        TripRequest,
        Held,
        HoldRefused,
        Released,
        Confirmed,
        Booking,
        BookingState,
        RetentionExpired,
        Retained,
        FinishedBatch,
    )
    return codec


def trip_runtime(
    *,
    journal: str | JournalWithSnapshots | None = None,
    capacity: Mapping[str, Mapping[str, int]] = DEFAULT_CAPACITY,
    faults: Mapping[str, FaultPlan] | None = None,
    retry: RetryPolicy | None = None,
    metrics_port: int | None = None,
) -> SagaRuntime:
    """A runtime for trips: the saga and its three services, each with its faults (if any);
    `metrics_port` serves its metrics in the Prometheus text format (extra `metrics`)."""
    faults = faults or {}

    def participant(name: str, cls: type[BookingService]) -> Participant:
        units = dict(capacity.get(name, {}))
        return Participant(
            name,
            lambda c: cls.start_recovered(c.journal, c.faults, capacity=units, **c.options),
            faults.get(name),
        )

    return SagaRuntime(
        TRIP_SAGA,
        participants=[participant(name, cls) for name, cls in SERVICES.items()],
        journal=journal,
        codec=trip_codec(),
        retry=retry,
        name="trips",
        metrics_port=metrics_port,
    )


def check_trips(runtime: SagaRuntime, outcomes: Mapping[str, SagaOutcome]) -> list[str]:
    """What breaks the trip invariants (empty if nothing), once the runtime is idle:

    - a committed trip is confirmed at all three services;
    - a rolled-back trip holds nothing anywhere (released, refused or never held);
    - no service has taken more units than an item has, and every unit taken is a booking
      held or confirmed.
    """
    problems = []
    for service in SERVICES:
        bookings: dict[str, Booking] = runtime.ask(service, GetBookings())
        taken: dict[str, int] = {}
        for booking in bookings.values():
            if booking.status in ("held", "confirmed"):
                taken[booking.item] = taken.get(booking.item, 0) + 1
        state: BookingState = runtime.ask(service, GetState())
        for item, units in state.capacity.items():
            if state.taken.get(item, 0) > units:
                problems.append(f"{service}: {item} has {state.taken[item]} units taken of {units}")
        if {i: n for i, n in state.taken.items() if n} != taken:
            problems.append(f"{service}: units taken {state.taken} differ from its bookings {taken}")
        for trip_id, outcome in outcomes.items():
            status = bookings[trip_id].status if trip_id in bookings else None
            if outcome.committed and status != "confirmed":
                problems.append(f"{trip_id}: committed, but {service} shows it {status}")
            if not outcome.committed and status in ("held", "confirmed"):
                problems.append(
                    f"{trip_id}: rolled back ({outcome.reason}), but {service} still has it {status}"
                )
    return problems


# --- the command line ---


def _trips(count: int, seed: int) -> list[tuple[str, TripRequest]]:
    """A seeded workload: the same `seed` gives the same trips."""
    rng = random.Random(seed)
    flights = ["LH123", "BA456", "XX999"]  # XX999 does not exist: those trips are refused
    hotels, cars = ["Adlon", "Savoy"], ["compact", "van"]
    return [
        (
            f"trip-{seed}-{n}",
            TripRequest(f"traveller {n}", rng.choice(flights), rng.choice(hotels), rng.choice(cars)),
        )
        for n in range(count)
    ]


PROG = "python -m saga_actors.examples.trip"
_STOP = StopRequest()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trips", type=whole_number, default=20, help="trips to book (default 20)")
    parser.add_argument(
        "--journal",
        metavar="PATH",
        help="a SQLite journal file: running again on it resumes its unfinished trips (default: in memory)",
    )
    parser.add_argument(
        "--seed", type=whole_number, default=1, help="seeds the workload and the faults (default 1)"
    )
    parser.add_argument(
        "--failure-rate",
        type=number,
        default=0.1,
        help="chance a call is refused as unavailable (default 0.1)",
    )
    parser.add_argument(
        "--crash-rate", type=number, default=0.02, help="chance a call crashes the service (default 0.02)"
    )
    parser.add_argument(
        "--latency",
        default="0,0.005",
        metavar="MIN,MAX",
        help="MIN,MAX seconds on the wire to each service (default 0,0.005)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the engine's warnings on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command: book `--trips` trips, print each verdict and a summary, check the invariants.

    Exit status 0 if every trip is all booked or all undone, 1 if not, 2 for a bad option
    (a bad --journal too: one line on stderr), 130 when stopped by Ctrl-C, 143 by SIGTERM,
    141 when the reader of its output goes away (`| head`), quietly.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.trips < 1:
            raise ValueError(f"--trips must be at least 1, got {args.trips}")
        try:
            low, high = (number(x) for x in args.latency.split(","))
        except ValueError:
            raise ValueError(f"--latency must be MIN,MAX seconds, got {args.latency!r:.40}") from None
        plans = {
            name: FaultPlan(
                failure_rate=args.failure_rate,
                crash_rate=args.crash_rate,
                min_latency=low,
                max_latency=high,
                seed=args.seed + n,
            )
            for n, name in enumerate(SERVICES)
        }
    except ValueError as bad:
        return error(PROG, str(bad))
    if args.journal is not None:
        problem = journal_problem(args.journal, otherwise="leave --journal out for an in-memory journal")
        if problem is not None:
            return error(PROG, problem)
    # SIGTERM stops the command as Ctrl-C does: no more waiting, the runtime stops (a journal
    # keeps the unfinished trips, resumed on its next run); so does a closed pipe (`| head`),
    # quietly, with exit status 141.
    kept = f"; the unfinished trips resume on the next run on {args.journal}" if args.journal else ""
    lock = new_lock_file(args.journal) if args.journal is not None else None
    status = run_stoppable(_STOP, lambda: _book(args, plans), f"{PROG}: interrupted{kept}\n")
    if status == 2:  # the journal was refused (the options were checked above)
        remove_stray_lock(lock)  # the library makes it before it refuses the file, and leaves it
    return status


def _book(args: argparse.Namespace, plans: Mapping[str, FaultPlan]) -> int:
    trips = _trips(args.trips, args.seed)
    runtime = trip_runtime(journal=args.journal, faults=plans)
    try:
        runtime.start()
    except Exception as failed:
        problem = open_problem(args.journal or "", failed) if args.journal else None
        if problem is None:
            raise
        return error(PROG, problem)
    with runtime:
        _STOP.check()
        recovered = runtime.recovery()
        if recovered.sagas_resumed:
            print(
                f"recovered {plural(recovered.sagas_resumed, 'unfinished trip')}: "
                f"{recovered.rolled_forward} rolled forward, {recovered.rolled_back} rolled back"
            )
        print(f"booking {plural(len(trips), 'trip')}", flush=True)
        futures = {trip_id: runtime.submit(trip_id, request) for trip_id, request in trips}
        outcomes = {trip_id: _outcome(future, 120) for trip_id, future in futures.items()}
        deadline = time.monotonic() + 60
        while not runtime.wait_idle(0.1) and time.monotonic() < deadline:
            _STOP.check()
        for trip_id, request in trips:
            outcome = outcomes[trip_id]
            verdict = "booked" if outcome.committed else f"rolled back: {outcome.reason}"
            print(f"  {trip_id:<14} {request.flight:<6} {request.hotel:<6} {request.car:<8} {verdict}")
        print(summary_line(outcomes, runtime.metrics()))
        problems = check_trips(runtime, outcomes)
    for problem in problems:
        print(f"FAILED: {problem}")
    print("every trip all booked or all undone" if not problems else plural(len(problems), "problem"))
    return 1 if problems else 0


def _outcome(future: SagaFuture[SagaOutcome], timeout: float) -> SagaOutcome:
    """`future.get(timeout)`, seeing to Ctrl-C and SIGTERM meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return future.get(min(0.1, max(deadline - time.monotonic(), 0.0)))
        except TimeoutError:
            _STOP.check()
            if time.monotonic() >= deadline:
                raise


def summary_line(outcomes: Mapping[str, SagaOutcome], metrics: Mapping[str, int]) -> str:
    """`19 booked, 1 rolled back; 4 retries, 1 compensation, 1 restart`."""
    booked = sum(1 for o in outcomes.values() if o.committed)
    return (
        f"{booked} booked, {len(outcomes) - booked} rolled back; "
        f"{plural(metrics['retries'], 'retry', 'retries')}, "
        f"{plural(metrics['compensations'], 'compensation')}, {plural(metrics['restarts'], 'restart')}"
    )


if __name__ == "__main__":
    sys.exit(main())
