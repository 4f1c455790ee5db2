"""Service processes for the tests: `saga-actors serve ...` in a child process, and a client.

    with ServiceProcess("inventory", tmp_path / "inventory.db", "--stock", "101=10") as inventory:
        status, body = inventory.call("POST", "/inventory/reserve", {...}, key="o1:reserve")

The child is the library's `ServiceProcess` (`saga_actors.actors.processes`): a free port
(`--port 0`) of 127.0.0.1, `start()` waits for its readiness line (bounded), its stdout and stderr
are collected whole (`stdout()`, `stderr()`) by reader threads. Here it has the tests' token by
default, and every request has a timeout. The client is the standard library's urllib: the
protocol, not a client library, is the contract.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from saga_actors.actors import processes

TOKEN = "test-token-0123456789abcdef"
CALL_TIMEOUT = 10.0  # seconds for one request


class ServiceProcess(processes.ServiceProcess):
    """One `saga-actors serve SERVICE --port PORT --journal JOURNAL [ARGS]` child process
    (`port` 0 by default: a free one), with the tests' token unless told otherwise."""

    def __init__(
        self,
        service: str,
        journal: str | os.PathLike[str],
        *args: str,
        token: str | None = TOKEN,
        env: dict[str, str] | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(service, journal, *args, token=token, env=env, port=port)

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
