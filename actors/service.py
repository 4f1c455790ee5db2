"""One participant as a service of its own: the inventory or the payment actor, supervised, on
its own journal, for a server to put behind the wire (`actors/server.py`).

It is the same actor as in the embedded order system - state serialized
through its mailbox, event-sourced, idempotent, answering only once its
events are durable, with simulated faults striking at its door - in a
supervision tree of its own::

    <service>-service (rest_for_one)
    |-- journal        its writer (a SQLite file of its own)
    |-- timer          the retention's expiries
    `-- participants (one_for_one)
        `-- inventory | payment   restarted from its journal when it crashes

Nothing here knows about HTTP, and nothing blocks an actor: a command is
told as a `Request` whose `reply_to` is whatever the server makes of it (an
event loop's future); only views and the restock are asks, for a caller's
thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import pykka

from saga_actors.actors.codec import order_codec
from saga_actors.actors.inventory import PERSISTENCE_ID as INVENTORY_ID
from saga_actors.actors.inventory import GetStock, InventoryActor, stock_command
from saga_actors.actors.payment import GetCaptures, GetPayments, PaymentActor
from saga_actors.persistence.sqlite import SQLiteJournal
from saga_actors.sagas.metrics import Metrics
from saga_actors.sagas.protocol import Request
from saga_actors.sagas.runtime import (
    DEFAULT_RETENTION,
    DEFAULT_SNAPSHOT_EVERY,
    PARTICIPANTS_BACKOFF,
    PARTICIPANTS_INTENSITY,
    RECOVERY_TIMEOUT,
    ROOT_BACKOFF,
    ROOT_INTENSITY,
)
from saga_actors.sagas.simulation import FaultInjector, FaultPlan
from saga_actors.supervision import (
    ONE_FOR_ONE,
    REST_FOR_ONE,
    Address,
    ChildSpec,
    ResourceActor,
    start_supervisor,
)
from saga_actors.supervision.timer import Timer

__all__ = ["SERVICES", "VIEWS", "ServiceNode"]

logger = logging.getLogger(__name__)

# The services a process can run: name -> the participant actor (its persistence id is the name).
SERVICES: Mapping[str, type[InventoryActor] | type[PaymentActor]] = {
    "inventory": InventoryActor,
    "payment": PaymentActor,
}
# (service, view) -> the query it asks its actor (GET /<service>/<view>).
VIEWS: Mapping[tuple[str, str], Callable[[], Any]] = {
    ("inventory", "stock"): GetStock,
    ("payment", "payments"): GetPayments,
    ("payment", "captures"): GetCaptures,
}


class ServiceNode:
    """One service's actor in its supervision tree, from `start()` to `stop()`.

    journal_path: its SQLite journal (created if missing; one process at a time).
    stock: `{product_id: units}` stocked at start if the inventory's journal is empty (as
        `OrderSystem(stock=...)`); only for the inventory.
    faults: simulated faults, drawn at the actor's door (unavailable, crash); the latency
        part is the server's to apply, before a request reaches the actor (`latency()`).
    on_failure(error): called once, from a supervisor's thread, if the tree gives up
        (its restarts came too fast): the service is down. An attribute too, which the
        server sets while it serves.
    metrics: counts the actor's restarts (`restarts`).
    """

    def __init__(
        self,
        service: str,
        journal_path: str | os.PathLike[str],
        *,
        stock: Mapping[int, int] | None = None,
        faults: FaultPlan | None = None,
        retention: float = DEFAULT_RETENTION,
        snapshot_every: int | None = DEFAULT_SNAPSHOT_EVERY,
        on_failure: Callable[[BaseException], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if service not in SERVICES:
            raise ValueError(f"service must be one of {sorted(SERVICES)}, got {service!r:.40}")
        if stock and service != "inventory":
            raise ValueError("stock is for the inventory service only")
        self.service = service
        self.journal_path = os.fspath(journal_path)
        self._stock = dict(stock or {})
        self._dice = FaultInjector(faults, service) if faults is not None else None
        self._retention = retention
        self._snapshot_every = snapshot_every
        self.on_failure = on_failure
        self.metrics = metrics if metrics is not None else Metrics(("restarts",))
        self.address = Address(service)
        self._journal: SQLiteJournal | None = None
        self._root: pykka.ActorRef[Any] | None = None

    # --- lifecycle ---

    def start(self) -> ServiceNode:
        """Open the journal, start the tree (the actor recovers from the journal), stock an empty
        inventory. Raises what opening the journal raises (`JournalInUse`, `NotAJournal`,
        OSError, sqlite3.Error); nothing is left running then."""
        journal = self._journal = SQLiteJournal(self.journal_path, order_codec())
        try:
            self._root = self._start_tree(journal)
            if self._stock and journal.highest_sequence_nr(INVENTORY_ID) == 0:
                self.address.ask(stock_command(self._stock), timeout=RECOVERY_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the actor, then the timer, then close the journal (its queued writes are
        finished first). Idempotent."""
        root, self._root = self._root, None
        if root is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                root.stop(block=True, timeout=RECOVERY_TIMEOUT)
        if self._journal is not None:
            self._journal.close()  # in case the tree never got to it; idempotent

    # --- what the server calls ---

    def latency(self) -> float:
        """Seconds the next request spends on the simulated wire (0 without faults)."""
        return self._dice.latency() if self._dice is not None else 0.0

    def tell(self, request: Request) -> None:
        """Hand a command to the actor (any thread, never blocks). Raises `pykka.ActorDeadError`
        while it restarts: the request did not reach it, nothing happened."""
        self.address.tell(request)

    def ask(self, message: Any, timeout: float) -> Any:
        """A view or the restock, from a caller's thread (it blocks): the actor's answer.
        Raises `pykka.ActorDeadError` while it restarts, `pykka.Timeout` after `timeout`."""
        return self.address.ask(message, timeout=timeout)

    # --- the tree ---

    def _start_tree(self, journal: SQLiteJournal) -> pykka.ActorRef[Any]:
        timer = Timer(f"{self.service}-timer")
        actor = SERVICES[self.service]
        dice = self._dice

        def start_actor() -> pykka.ActorRef[Any]:
            return actor.start_recovered(
                journal,
                dice,
                snapshot_every=self._snapshot_every,
                retention=self._retention,
                timer=timer,
                timeout=RECOVERY_TIMEOUT,
            )

        participant = ChildSpec(self.service, address=self.address, start=start_actor)
        return start_supervisor(
            name=f"{self.service}-service",
            children=[
                ChildSpec("journal", lambda: ResourceActor.start("journal", journal.open, journal.close)),
                ChildSpec(
                    "timer",
                    lambda: ResourceActor.start("timer", timer.start, timer.stop, watch=timer.set_on_died),
                ),
                ChildSpec(
                    "participants",
                    lambda: start_supervisor(
                        name="participants",
                        children=[participant],
                        strategy=ONE_FOR_ONE,
                        intensity=PARTICIPANTS_INTENSITY,
                        backoff=PARTICIPANTS_BACKOFF,
                        on_restart=self._restarted,
                    ),
                ),
            ],
            strategy=REST_FOR_ONE,
            intensity=ROOT_INTENSITY,
            backoff=ROOT_BACKOFF,
            on_restart=self._restarted,
            on_exit=self._root_exited,
        )

    def _restarted(self, child_id: str) -> None:
        self.metrics.increment("restarts")

    def _root_exited(self, urn: str, error: BaseException | None) -> None:
        if error is None:
            return  # stopped by stop()
        logger.critical("%s service stopped after repeated failures: %s", self.service, error)
        if self.on_failure is not None:
            self.on_failure(error)
