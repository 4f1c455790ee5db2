"""Service processes for the tests: `saga-actors serve ...` in a child process, and a client.

    with ServiceProcess("inventory", tmp_path / "inventory.db", "--stock", "101=10") as inventory:
        status, body = inventory.call("POST", "/inventory/reserve", {...}, key="o1:reserve")

The child listens on a free port (`--port 0`) of 127.0.0.1; `start()` waits for its readiness
line (bounded), and every request has a timeout. Its stdout and stderr are collected whole
(`stdout()`, `stderr()`) by reader threads, so a chatty child never blocks on a full pipe.
The client is the standard library's urllib: the protocol, not a client library, is the contract.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TOKEN = "test-token-0123456789abcdef"
READY = re.compile(r"saga-actors (inventory|payment) listening on (http://\S+)")
START_TIMEOUT = 20.0  # seconds for a child to say it listens (an import-heavy start on a busy machine)
CALL_TIMEOUT = 10.0  # seconds for one request


class ServiceProcess:
    """One `saga-actors serve SERVICE --port PORT --journal JOURNAL [ARGS]` child process
    (`port` 0 by default: a free one)."""

    def __init__(
        self,
        service: str,
        journal: Path,
        *args: str,
        token: str | None = TOKEN,
        env: dict[str, str] | None = None,
        port: int = 0,
    ) -> None:
        self.service = service
        self.port = port
        self.journal = journal
        self.args = args
        environment = {k: v for k, v in os.environ.items() if k != "SAGA_ACTORS_TOKEN"}
        if token is not None:
            environment["SAGA_ACTORS_TOKEN"] = token
        environment.update(env or {})
        self._env = environment
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._out = bytearray()
        self._err = bytearray()
        self._changed = threading.Condition()
        self._readers: list[threading.Thread] = []

    def command(self) -> list[str]:
        return [sys.executable, "-m", "saga_actors", "serve", self.service, "--port", str(self.port),
                "--journal", str(self.journal), *self.args]  # fmt: skip

    def spawn(self) -> ServiceProcess:
        """Start the child without waiting for it."""
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=self._env,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        return self

    def start(self, timeout: float = START_TIMEOUT) -> ServiceProcess:
        """Start the child and wait for its readiness line; fail with its stderr if it exits first."""
        self.spawn()
        match = self.wait_for_output(READY, timeout)
        self.url = match.group(2)
        return self

    def _read(self, pipe: Any, into: bytearray) -> None:
        for chunk in iter(lambda: pipe.read1(65536), b""):
            with self._changed:
                into.extend(chunk)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_output(
        self, pattern: re.Pattern[str], timeout: float, *, stderr: bool = False
    ) -> re.Match[str]:
        """The first match of `pattern` in the child's stdout (or stderr), waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = pattern.search((self._err if stderr else self._out).decode(errors="replace"))
                if match:
                    return match
                assert self.proc is not None
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise AssertionError(f"{self.service} exited ({self.proc.returncode}): {self.stderr()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{self.service}: no {pattern.pattern!r} in {timeout} s: {self.stderr()}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def wait(self, timeout: float) -> int:
        """The child's exit status, once it has exited and its output is read (bounded)."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stdout(self) -> str:
        with self._changed:
            return self._out.decode(errors="replace")

    def stderr(self) -> str:
        with self._changed:
            return self._err.decode(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL, and wait for it to be gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        token: str | None = TOKEN,
        raw: bytes | None = None,
        timeout: float = CALL_TIMEOUT,
    ) -> tuple[int, Any]:
        return call(self.url, method, path, body, key=key, token=token, raw=raw, timeout=timeout)

    def view(self, name: str) -> Any:
        status, body = self.call("GET", f"/{self.service}/{name}")
        assert status == 200, (status, body)
        return body


def call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = None,
    token: str | None = TOKEN,
    raw: bytes | None = None,
    timeout: float = CALL_TIMEOUT,
) -> tuple[int, Any]:
    """(status, JSON body or None) of one request; HTTP errors are answers, not exceptions."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if key is not None:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload


def command(service: ServiceProcess, operation: str, body: dict[str, Any], **kwargs: Any) -> tuple[int, Any]:
    """A command with its idempotency key, `<order_id>:<operation>`."""
    key = f"{body.get('order_id')}:{operation}"
    return service.call("POST", f"/{service.service}/{operation}", body, key=key, **kwargs)


def reserve(inventory: ServiceProcess, order_id: str, *items: tuple[int, int]) -> tuple[int, Any]:
    body = {"order_id": order_id, "items": [{"product_id": p, "quantity": q} for p, q in items]}
    return command(inventory, "reserve", body)


def authorize(
    payment: ServiceProcess, order_id: str, amount: str = "19.98", card: str = "4242424242424242"
) -> tuple[int, Any]:
    body = {
        "order_id": order_id,
        "amount": amount,
        "currency": "USD",
        "card": {"number": card, "expiry": "12/30", "cvv": "123"},
    }
    return command(payment, "authorize", body)


def stock(inventory: ServiceProcess) -> dict[int, tuple[int, int, int]]:
    """{product_id: (on_hand, reserved, received)} from the stock view."""
    return {
        p["product_id"]: (p["on_hand"], p["reserved"], p["received"])
        for p in inventory.view("stock")["products"]
    }
