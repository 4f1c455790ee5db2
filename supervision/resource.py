"""A supervised child for a non-actor resource (a thread, a database).

It opens the resource when it starts and closes it when it stops, so the
resource takes its place in the supervision tree: started before the
children that use it, stopped after them, and - under `rest_for_one` -
restarted together with them.

A resource that can fail on its own (a thread that dies) reports it through
`watch`: the actor then exits abnormally with `ResourceFailed`, and its
supervisor restarts it (closing, then opening the resource again) like any
other child that crashed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from saga_actors.supervision.monitor import Monitored

__all__ = ["FailureReport", "ResourceActor", "ResourceFailed"]

FailureReport = Callable[[BaseException], None]
"""What a watched resource calls, from any thread, when it has failed."""


class ResourceFailed(Exception):
    """A `ResourceActor` exits with this when its resource reported a failure;
    the resource's error is its `__cause__`."""


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


class ResourceActor(Monitored, pykka.ThreadingActor):
    """Opens a resource on start, closes it on stop or failure.

    `open_()` runs in the starting thread (so a failure to open raises to the
    supervisor); `close()` runs in the actor's thread.

    `watch(report)`, if given, is called in the starting thread before
    `open_()`: it hands the resource `report`, a callable that the resource
    calls from any thread (e.g. its own, as it dies) with the error when it
    fails. `report` only tells the actor; the actor's thread then raises
    `ResourceFailed` from it, so the actor closes the resource and exits
    abnormally, and its supervisor sees the exit. A report after the actor
    has stopped (a previous incarnation's) is ignored. Each incarnation calls
    `watch` again, so the resource reports to the current one.
    """

    def __init__(
        self,
        name: str,
        open_: Callable[[], Any],
        close: Callable[[], Any],
        watch: Callable[[FailureReport], Any] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self._open = open_
        self._close = close
        if watch is not None:
            watch(self._report_failure)
        self._open()  # in the starting thread: a failure raises to the supervisor

    def __str__(self) -> str:
        return f"Resource {self.name}"

    def _report_failure(self, error: BaseException) -> None:
        """Called by the resource, from any thread."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_Failed(error))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _Failed):
            raise ResourceFailed(f"{self.name} failed: {message.error!r}") from message.error
        return super().on_receive(message)

    def on_stop(self) -> None:
        try:
            self._close()
        finally:
            super().on_stop()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        try:
            self._close()
        finally:
            super().on_failure(exception_type, exception_value, traceback)
