"""A supervised child for a non-actor resource (a thread, a database).

It opens the resource when it starts and closes it when it stops, so the
resource takes its place in the supervision tree: started before the
children that use it, stopped after them, and - under `rest_for_one` -
restarted together with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pykka

from saga_actors.supervision.monitor import Monitored

__all__ = ["ResourceActor"]


class ResourceActor(Monitored, pykka.ThreadingActor):
    def __init__(self, name: str, open_: Callable[[], Any], close: Callable[[], Any]) -> None:
        super().__init__()
        self.name = name
        self._open = open_
        self._close = close
        self._open()  # in the starting thread: a failure raises to the supervisor

    def __str__(self) -> str:
        return f"Resource {self.name}"

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
