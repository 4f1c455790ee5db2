"""Stable addresses: one name for all the incarnations of a supervised child."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pykka

__all__ = ["Address"]


class Address:
    """Reaches the current incarnation of a supervised actor.

    A restarted child is a new pykka actor; whoever holds its address
    reaches the new one. Between incarnations (during restart backoff)
    `tell` raises `pykka.ActorDeadError`, like a dead ref: a transient
    failure that the sender's retry covers.
    """

    __slots__ = ("_changed", "_handed", "_ref", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._ref: pykka.ActorRef[Any] | None = None
        self._changed = threading.Condition()
        self._handed: list[Any] = []

    def __repr__(self) -> str:
        return f"<Address {self.name}>"

    @property
    def ref(self) -> pykka.ActorRef[Any] | None:
        return self._ref

    def bind(self, ref: pykka.ActorRef[Any] | None) -> None:
        """Point at `ref` (None between incarnations); a new incarnation first gets
        the messages its failed predecessor handed over."""
        with self._changed:
            self._ref = ref
            if ref is not None:
                handed, self._handed = self._handed, []
                for index, message in enumerate(handed):
                    try:
                        ref.tell(message)
                    except pykka.ActorDeadError:
                        # Died already (it may crash in its first message): the rest wait for the next.
                        self._handed = handed[index:] + self._handed
                        break
            self._changed.notify_all()

    def hand_over(self, messages: list[Any]) -> None:
        """Keep `messages` (queued for a failed incarnation) for the next one.

        If an incarnation is bound already, they go to it at once.
        """
        with self._changed:
            ref = self._ref
            if ref is None or not ref.is_alive():
                self._handed.extend(messages)
                return
        for message in messages:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(message)

    def wait_for_incarnation(self, timeout: float) -> bool:
        """Block the calling thread (never an actor's) until a live incarnation is bound."""
        with self._changed:
            return self._changed.wait_for(lambda: self._ref is not None and self._ref.is_alive(), timeout)

    def tell(self, message: Any) -> None:
        ref = self._ref
        if ref is None:
            raise pykka.ActorDeadError(f"{self.name} is not running (restarting?)")
        ref.tell(message)

    def ask(self, message: Any, *, timeout: float | None = None) -> Any:
        ref = self._ref
        if ref is None:
            raise pykka.ActorDeadError(f"{self.name} is not running (restarting?)")
        return ref.ask(message, timeout=timeout)

    def is_alive(self) -> bool:
        ref = self._ref
        return ref is not None and ref.is_alive()
