"""A service as a child process: `saga-actors serve ...` started, stopped, killed and restarted
from Python (the demo's `--services processes`, the benchmark and the tests use it).

    with ServiceProcess("inventory", "inventory.db", "--stock", "101=10", token=token) as inventory:
        system = OrderSystem(inventory=inventory.url, service_token=token, ...)

The child is `python -m saga_actors serve SERVICE --port PORT --journal JOURNAL [ARGS]` with the
same interpreter, listening on a free port of 127.0.0.1 unless told otherwise (`port=0`).
`start()` waits, bounded, for its readiness line (`saga-actors inventory listening on
http://HOST:PORT`) and learns its URL from it; `restart()` starts it again on the same port and
journal, after a kill. The access token goes to the child in its environment
(`SAGA_ACTORS_TOKEN`), never on its command line. Its stdout and stderr are read by threads of
their own, so a chatty child never blocks on a full pipe. It runs in a process group of its own:
a Ctrl-C at the terminal reaches the parent only, which decides when to stop it (`stop()`:
SIGTERM, then SIGKILL if it does not exit in time).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = [
    "NODE_READY",
    "READY",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "NodeProcess",
    "ServiceFailed",
    "ServiceProcess",
]

READY = re.compile(r"saga-actors (inventory|payment) listening on (http://\S+)")
NODE_READY = re.compile(r"saga-actors (node) listening on (http://[^\s()]+)")
START_TIMEOUT = 20.0  # seconds for a child to say it listens (an import-heavy start on a busy machine)
STOP_TIMEOUT = 10.0  # seconds a child may take to exit after SIGTERM before it is killed
TOKEN_VARIABLE = "SAGA_ACTORS_TOKEN"


class ServiceFailed(RuntimeError):
    """A service process did not start: it exited first (`status`, its exit status) or did not
    say it listens in time (`status` None; it has been killed). The message ends with the last
    line the child wrote to stderr, which says why."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class ServiceProcess:
    """One `saga-actors serve SERVICE` child process on `journal`, with extra `args` (`--stock
    ...`, `--failure-rate ...`, ...).

    token: put in the child's environment as SAGA_ACTORS_TOKEN (None: the child gets no such
        variable, whatever the parent's; give it `--token-file` then).
    env: more variables for the child's environment.
    port: the port to listen on; 0 (the default) lets the child pick a free one.
    keep: the bytes of each of its output streams kept for `stdout()` and `stderr()` (the last
        ones); None keeps everything.
    on_stderr_line: called with each line the child writes to stderr (in a reader thread).
    """

    ready = READY  # the readiness line; its group 2 is the URL
    kind = "service"  # what the child is called in errors ("the payment service exited ...")

    def __init__(
        self,
        service: str,
        journal: str | os.PathLike[str],
        *args: str,
        token: str | None = None,
        env: dict[str, str] | None = None,
        port: int = 0,
        keep: int | None = None,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> None:
        self.service = service
        self.journal = Path(journal)
        self.journal_text = os.fspath(journal)  # as given: a URL must not go through Path ("//" is lost)
        self.args = args
        self.port = port
        self.url = ""  # set once the child says it listens
        self.proc: subprocess.Popen[bytes] | None = None
        environment = {k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE}
        if token is not None:
            environment[TOKEN_VARIABLE] = token
        environment.update(env or {})
        self._env = environment
        self._keep = keep
        self._on_stderr_line = on_stderr_line
        self._out = bytearray()
        self._err = bytearray()
        self._changed = threading.Condition()
        self._readers: list[threading.Thread] = []

    def __repr__(self) -> str:  # no environment: it holds the token
        pid = self.proc.pid if self.proc is not None else None
        return f"ServiceProcess({self.service!r}, {str(self.journal)!r}, pid={pid}, url={self.url!r})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def bound_port(self) -> int | None:
        """The port it listens on, once it has said so."""
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0]) if self.url else None

    def command(self, port: int | None = None) -> list[str]:
        return [sys.executable, "-m", "saga_actors", *self.subcommand(),
                "--port", str(self.port if port is None else port), "--journal", self.journal_text,
                *self.args]  # fmt: skip

    def subcommand(self) -> list[str]:
        """The `saga-actors` subcommand and its arguments before the options."""
        return ["serve", self.service]

    def spawn(self, port: int | None = None) -> ServiceProcess:
        """Start the child (on `port`, else the one given) without waiting for it; its output
        from now on is what `stdout()` and `stderr()` hold."""
        with self._changed:
            self._out.clear()
            self._err.clear()
        self.proc = subprocess.Popen(
            self.command(port),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=self._env,
            process_group=0,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(
                target=self._read, args=(self.proc.stdout, self._out, None), daemon=True,
                name=f"{self.service}-stdout",
            ),
            threading.Thread(
                target=self._read, args=(self.proc.stderr, self._err, self._on_stderr_line), daemon=True,
                name=f"{self.service}-stderr",
            ),
        ]  # fmt: skip
        for reader in self._readers:
            reader.start()
        return self

    def start(
        self, timeout: float = START_TIMEOUT, *, check: Callable[[], None] | None = None
    ) -> ServiceProcess:
        """Start the child and wait until it listens; ServiceFailed if it exits first or does not
        listen within `timeout` seconds (then it is killed). `check` is called at least every
        0.1 s while waiting, and may raise to give up (the child is killed)."""
        return self._started(self.port, timeout, check)

    def restart(
        self, timeout: float = START_TIMEOUT, *, check: Callable[[], None] | None = None
    ) -> ServiceProcess:
        """Start it again on the port it listened on and the same journal (SIGKILLing it first if it
        still runs), and wait until it listens, as `start()`."""
        port = self.bound_port if self.bound_port is not None else self.port
        self.kill()
        return self._started(port, timeout, check)

    def _started(self, port: int, timeout: float, check: Callable[[], None] | None) -> ServiceProcess:
        self.spawn(port)
        try:
            self.url = self.wait_for_output(self.ready, timeout, check=check).group(2)
        except BaseException:
            self.kill()
            raise
        return self

    def _read(self, pipe: IO[bytes], into: bytearray, each_line: Callable[[str], None] | None) -> None:
        for line in pipe:
            with self._changed:
                into.extend(line)
                if self._keep is not None and len(into) > self._keep:
                    del into[: len(into) - self._keep]
                self._changed.notify_all()
            if each_line is not None:
                each_line(line.decode(errors="replace"))
        with self._changed:
            self._changed.notify_all()

    def wait_for_output(
        self,
        pattern: re.Pattern[str],
        timeout: float,
        *,
        stderr: bool = False,
        check: Callable[[], None] | None = None,
    ) -> re.Match[str]:
        """The first match of `pattern` in the child's stdout (or stderr), waiting up to `timeout`
        seconds; ServiceFailed if the child exits (and its output ends) without it, or in time."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                match = pattern.search((self._err if stderr else self._out).decode(errors="replace"))
                if match:
                    return match
                assert self.proc is not None
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise ServiceFailed(
                        f"the {self.service} {self.kind} exited with status {self.proc.returncode}"
                        f"{self._why()}",
                        self.proc.returncode,
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServiceFailed(
                        f"the {self.service} {self.kind} did not say {pattern.pattern!r} within {timeout} s"
                        f"{self._why()}",
                        None,
                    )
                self._changed.wait(min(remaining, 0.1))
            if check is not None:
                check()

    def _why(self) -> str:
        lines = self._err.decode(errors="replace").strip().splitlines()
        return f": {lines[-1]}" if lines else ""

    def wait(self, timeout: float) -> int:
        """The child's exit status, once it has exited and its output is read (bounded)."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stdout(self) -> str:
        with self._changed:
            return self._out.decode(errors="replace")

    def stderr(self) -> str:
        with self._changed:
            return self._err.decode(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def pause(self) -> None:
        """SIGSTOP: the child stops running (its connections stay open, unanswered) until `resume()`."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: the child runs again after `pause()`."""
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone (nothing if it never started or has exited)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (it drains the requests in flight and closes its journal), and SIGKILL if it has
        not exited within `timeout` seconds; its exit status (None if it never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.wait(STOP_TIMEOUT)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class NodeProcess(ServiceProcess):
    """One `saga-actors node --journal JOURNAL --port PORT [ARGS]` child process: an order system
    behind HTTP (`actors/node_server.py`), with extra `args` (`--stock ...`, `--inventory URL`,
    `--node-id N`, ...). Everything else as `ServiceProcess`: the token in its environment,
    a free port of 127.0.0.1 by default, `start()` waiting for its readiness line (`saga-actors
    node listening on http://HOST:PORT (...)`), `stop()` (SIGTERM: it drains), `kill()`,
    `pause()`, `resume()`, `restart()` (on the same port and journal).

    `journal` is a SQLite path or a `postgresql://` URL: given to the child as it is, on its
    command line (put a PostgreSQL password in the environment, `PGPASSWORD`, not in the URL).
    """

    ready = NODE_READY
    kind = "process"

    def __init__(
        self,
        journal: str | os.PathLike[str],
        *args: str,
        token: str | None = None,
        env: dict[str, str] | None = None,
        port: int = 0,
        keep: int | None = None,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            "node", journal, *args, token=token, env=env, port=port, keep=keep, on_stderr_line=on_stderr_line
        )

    def __repr__(self) -> str:  # no environment (the token), no journal (a URL may hold a password)
        return f"NodeProcess(pid={self.pid}, url={self.url!r})"

    def subcommand(self) -> list[str]:
        return ["node"]
