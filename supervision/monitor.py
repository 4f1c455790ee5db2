"""Knowing when an actor dies: the `Monitored` mixin (pykka has no links).

A supervisor starts a child inside `start_monitored(start, hook)`; the
child's `__init__` - which pykka runs in the starting thread - picks the
hook up, and the child calls it exactly once when it exits: with `None` for
a normal stop, or with the error that killed it. No polling, no thread per
child, no race between starting an actor and watching it.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pykka

from saga_actors.supervision.address import Address

__all__ = ["ExitHook", "Kill", "Killed", "Monitored", "kill", "start_monitored"]

ExitHook = Callable[[str, "BaseException | None"], None]
"""Called with (actor_urn, error or None) when a monitored actor exits."""

_current: contextvars.ContextVar[tuple[ExitHook, Address | None] | None] = contextvars.ContextVar(
    "supervision_monitor", default=None
)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Kill:
    """Tell this to a monitored actor to make it exit abnormally (fault tests)."""

    reason: str = "killed"


class Killed(Exception):
    """Raised inside an actor that was told `Kill`."""


class Monitored:
    """Mixin for pykka actors that a supervisor can watch; list it first in the bases.

    An actor marks a deliberate stop as a failure by setting `exit_reason`
    before it stops (e.g. recovery failed, or a supervisor escalates).
    """

    exit_reason: BaseException | None = None
    # A supervised actor runs on a daemon thread: a program that forgets to
    # stop its supervision tree can still exit (pykka's default is non-daemon,
    # which keeps the interpreter alive forever). Whoever owns the tree stops
    # it at exit if it needs a clean shutdown (OrderSystem does, via atexit).
    use_daemon_thread = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        current = _current.get()
        self._exit_hook: ExitHook | None
        address: Address | None
        self._exit_hook, address = current if current is not None else (None, None)
        self._address = address
        self._exit_reported = False
        if address is not None:
            # Bound before the actor's thread runs, so a reply to a message it
            # sends from on_start already finds it.
            address.bind(self.actor_ref)  # type: ignore[attr-defined]

    def on_start(self) -> None:
        try:
            super().on_start()  # type: ignore[misc]
        except BaseException as error:
            self._report_exit(error)
            raise

    def on_stop(self) -> None:
        try:
            super().on_stop()  # type: ignore[misc]
        finally:
            self._report_exit(self.exit_reason)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        try:
            super().on_failure(exception_type, exception_value, traceback)  # type: ignore[misc]
        finally:
            self._hand_over_mailbox()
            self._report_exit(exception_value or RuntimeError("actor failed"))

    def _hand_over_mailbox(self) -> None:
        """Give the messages still queued to the next incarnation (runs in this actor's thread).

        pykka drops the queued `tell`s of an actor that fails; one bad message
        must not take the others down with it. The `tell`s go to the stable
        address, which delivers them to the next incarnation first; asks stay
        and fail with ActorDeadError (their callers retry); a Kill is not
        passed on.
        """
        address = self._address
        if address is None:
            return
        inbox = self.actor_inbox  # type: ignore[attr-defined]
        kept, handed = [], []
        while True:
            try:
                envelope = inbox.get_nowait()
            except queue.Empty:
                break
            if envelope.reply_to is None and not isinstance(envelope.message, Kill):
                handed.append(envelope.message)
            else:
                kept.append(envelope)
        for envelope in kept:
            inbox.put(envelope)
        if handed:
            address.hand_over(handed)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Kill):
            raise Killed(message.reason)
        return super().on_receive(message)  # type: ignore[misc]

    def _report_exit(self, error: BaseException | None) -> None:
        if self._exit_reported:
            return
        self._exit_reported = True
        if self._exit_hook is not None:
            self._exit_hook(self.actor_urn, error)  # type: ignore[attr-defined]


def start_monitored(start: Callable[[], R], hook: ExitHook, address: Address | None = None) -> R:
    """Run `start()` (which starts one `Monitored` actor) with `hook` as its exit hook.

    If `address` is given, the new actor binds it to itself as it is created.
    """
    token = _current.set((hook, address))
    try:
        return start()
    finally:
        _current.reset(token)


def kill(target: Any, reason: str = "killed") -> None:
    """Make a monitored actor (a ref or an address) exit abnormally, as a crash would."""
    with contextlib.suppress(pykka.ActorDeadError):
        target.tell(Kill(reason))
