"""The supervisor: an actor that starts children, notices their exits, restarts them.

It never sleeps: restart backoff is a message it schedules to itself on its
own timer. It stops its children in the reverse of their start order. When
restarts come faster than its intensity allows, it stops its children and
exits abnormally, which its own supervisor sees as a child failure
(escalation); the root's exit goes to whoever started it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pykka

from saga_actors.supervision.address import Address
from saga_actors.supervision.monitor import ExitHook, Monitored, start_monitored
from saga_actors.supervision.spec import (
    ONE_FOR_ALL,
    ONE_FOR_ONE,
    REST_FOR_ONE,
    STRATEGIES,
    TEMPORARY,
    TRANSIENT,
    Backoff,
    ChildSpec,
    Intensity,
    RestartWindow,
    Strategy,
)
from saga_actors.supervision.timer import Timer, TimerHandle

__all__ = ["AddChild", "Escalated", "StartChild", "Supervisor", "WhichChildren", "start_supervisor"]

logger = logging.getLogger(__name__)


class Escalated(Exception):
    """A supervisor gave up: its children restarted more often than its intensity allows."""


@dataclass(frozen=True, slots=True)
class StartChild:
    """Ask: add a child and start it; answers its Address (raises if it cannot start)."""

    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class AddChild:
    """Tell: add a child and start it without waiting; if it cannot start,
    it is restarted with backoff like a child that crashed."""

    spec: ChildSpec


@dataclass(frozen=True, slots=True)
class WhichChildren:
    """Ask: [(id, alive, restarts)] in start order."""


@dataclass(frozen=True, slots=True)
class _StartChildren:
    pass


@dataclass(frozen=True, slots=True)
class _ChildExited:
    child_id: str
    urn: str
    error: BaseException | None


@dataclass(frozen=True, slots=True)
class _RestartDue:
    child_ids: tuple[str, ...]


@dataclass(slots=True)
class _Child:
    spec: ChildSpec
    address: Address
    ref: pykka.ActorRef[Any] | None = None
    urn: str | None = None
    started_at: float = 0.0
    consecutive: int = 0  # restarts since it last ran for `reset_after`
    restarts: int = 0
    pending: TimerHandle | None = field(default=None, repr=False)


class Supervisor(Monitored, pykka.ThreadingActor):
    """Supervises `children` (started in order by `start_supervisor`).

    `on_restart(child_id)` is called after each restart (for metrics).
    """

    def __init__(
        self,
        *,
        name: str,
        children: Sequence[ChildSpec] = (),
        strategy: Strategy = ONE_FOR_ONE,
        intensity: Intensity = Intensity(),
        backoff: Backoff = Backoff(),
        on_restart: Callable[[str], None] | None = None,
        seed: int | str | None = None,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        ids = [spec.id for spec in children]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}: child ids must be unique: {ids}")
        self.name = name
        self._initial = list(children)
        self._children: dict[str, _Child] = {}  # in start order
        self._strategy = strategy
        self._intensity = intensity
        self._backoff = backoff
        self._on_restart = on_restart
        self._restarts = RestartWindow(self._intensity)
        self._random = random.Random(f"{name}:{seed}")
        self._timer = Timer(f"{name}-restarts")
        self._stopping = False

    def __str__(self) -> str:
        return f"Supervisor {self.name}"

    # --- lifecycle ---

    def on_start(self) -> None:
        self._timer.start()
        super().on_start()

    def on_stop(self) -> None:
        self._shut_down()
        super().on_stop()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self._shut_down()
        super().on_failure(exception_type, exception_value, traceback)

    def _shut_down(self) -> None:
        self._stopping = True
        self._stop_children(list(self._children.values()))
        self._timer.stop()

    # --- messages ---

    def on_receive(self, message: Any) -> Any:
        if self._stopping:
            return None
        match message:
            case _ChildExited(child_id=child_id, urn=urn, error=error):
                self._exited(child_id, urn, error)
            case _RestartDue(child_ids=child_ids):
                self._restart(child_ids)
            case StartChild(spec=spec):
                return self._add_and_start(spec)
            case AddChild(spec=spec):
                self._add(spec)
            case WhichChildren():
                return [
                    (c.spec.id, c.ref is not None and c.ref.is_alive(), c.restarts)
                    for c in self._children.values()
                ]
            case _StartChildren():
                self._start_initial()
            case _:
                return super().on_receive(message)
        return None

    def _start_initial(self) -> None:
        for spec in self._initial:
            try:
                self._add_and_start(spec)
            except BaseException:
                self._stop_children(list(self._children.values()))
                self._children.clear()
                raise

    def _add_and_start(self, spec: ChildSpec) -> Address:
        if spec.id in self._children:
            raise ValueError(f"{self.name}: a child {spec.id!r} exists already")
        child = _Child(spec, spec.address or Address(spec.id))
        self._start(child)  # raises if it cannot start: nothing was added
        self._children[spec.id] = child
        return child.address

    def _add(self, spec: ChildSpec) -> None:
        if spec.id in self._children:
            logger.warning("%s: a child %r exists already; not added again", self.name, spec.id)
            return
        child = _Child(spec, spec.address or Address(spec.id))
        self._children[spec.id] = child
        try:
            self._start(child)
        except Exception as error:
            logger.warning("%s: starting %s failed: %r", self.name, spec.id, error)
            self._failed(child, error)

    def _start(self, child: _Child) -> None:
        child_id = child.spec.id
        supervisor = self.actor_ref

        def hook(urn: str, error: BaseException | None) -> None:
            try:
                supervisor.tell(_ChildExited(child_id, urn, error))
            except pykka.ActorDeadError:
                pass  # the supervisor is gone; nothing to restart

        ref = start_monitored(child.spec.start, hook, child.address)
        child.ref, child.urn, child.started_at = ref, ref.actor_urn, time.monotonic()
        child.address.bind(ref)

    # --- exits and restarts ---

    def _exited(self, child_id: str, urn: str, error: BaseException | None) -> None:
        child = self._find(child_id)
        if child is None or child.urn != urn:
            return  # an incarnation we stopped ourselves, or one already replaced
        child.ref, child.urn = None, None
        child.address.bind(None)
        restart_type = child.spec.restart
        if restart_type == TEMPORARY or (restart_type == TRANSIENT and error is None):
            del self._children[child_id]
            return
        logger.warning(
            "%s: child %s exited%s",
            self.name,
            child_id,
            f" abnormally: {error!r}" if error is not None else "",
        )
        self._failed(child, error)

    def _failed(self, child: _Child, error: BaseException | None) -> None:
        """Apply the strategy to a child that exited, or could not be restarted."""
        now = time.monotonic()
        if self._restarts.exceeded(now):
            self._escalate(child.spec.id, error)
            return
        group = self._group(child)
        self._stop_children([c for c in group if c is not child])
        if child.started_at and now - child.started_at >= self._backoff.reset_after:
            child.consecutive = 0
        delay = self._backoff.delay(child.consecutive, self._random.random())
        child.consecutive += 1
        ids = tuple(c.spec.id for c in group)
        for member in group:
            if member.pending is not None:
                member.pending.cancel()
        child.pending = self._timer.schedule(delay, self.actor_ref, _RestartDue(ids))

    def _restart(self, child_ids: tuple[str, ...]) -> None:
        for child_id in child_ids:
            child = self._find(child_id)
            if child is None or child.ref is not None:
                continue
            child.pending = None
            try:
                self._start(child)
            except Exception as error:
                logger.warning("%s: restarting %s failed: %r", self.name, child_id, error)
                self._failed(child, error)
                return
            child.restarts += 1
            logger.info("%s: restarted %s (restart %d)", self.name, child_id, child.restarts)
            if self._on_restart is not None:
                self._on_restart(child_id)

    def _escalate(self, child_id: str, error: BaseException | None) -> None:
        intensity = self._intensity
        reason = Escalated(
            f"{self.name}: more than {intensity.max_restarts} restarts within "
            f"{intensity.within_seconds} s (last: {child_id}: {error!r})"
        )
        logger.error("%s", reason)
        self.exit_reason = reason
        self._shut_down()
        self.stop()

    def _group(self, child: _Child) -> list[_Child]:
        if self._strategy == ONE_FOR_ALL:
            return list(self._children.values())
        if self._strategy == REST_FOR_ONE:
            children = list(self._children.values())
            return children[children.index(child) :]
        return [child]

    def _stop_children(self, children: Sequence[_Child]) -> None:
        """Stop deliberately, in the reverse of the start order."""
        for child in reversed(list(children)):
            if child.pending is not None:
                child.pending.cancel()
                child.pending = None
            ref, child.ref, child.urn = child.ref, None, None
            child.address.bind(None)
            if ref is not None:
                try:
                    ref.stop(block=True, timeout=child.spec.shutdown_timeout)
                except pykka.ActorDeadError:
                    pass
                except pykka.Timeout:
                    logger.error(
                        "%s: %s did not stop within %s s",
                        self.name,
                        child.spec.id,
                        child.spec.shutdown_timeout,
                    )

    def _find(self, child_id: str) -> _Child | None:
        return self._children.get(child_id)


def start_supervisor(*, on_exit: ExitHook | None = None, **kwargs: Any) -> pykka.ActorRef[Supervisor]:
    """Start a supervisor and its children, in order; raise if one cannot start.

    `on_exit(urn, error)` is the hook of the supervisor itself (its parent's,
    or the application's for a root).
    """

    def start() -> pykka.ActorRef[Supervisor]:
        return Supervisor.start(**kwargs)

    ref = start_monitored(start, on_exit) if on_exit is not None else start()
    try:
        ref.ask(_StartChildren())
    except BaseException:
        ref.stop()
        raise
    return ref
