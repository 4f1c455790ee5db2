"""`saga-actors node` in front of `saga-actors serve inventory` and `serve payment`: three
processes, orders over HTTP end to end.

The payment service takes 0.4 s per command (`--latency`), so an order takes about a second:
long enough for an order to be in flight when a test wants it so (a tiny `?timeout=`, a
SIGTERM), without any sleep - the tests wait on what the node says. Every wait is bounded.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga_actors.actors.processes import NodeProcess
from tests.conftest import APPROVED, make_request, wait_until
from tests.helpers.services import TOKEN, ServiceProcess, call, stock

pytest.importorskip("aiohttp")

EXIT_TIMEOUT = 20.0  # seconds a stopped node may take to exit
SLOW = ("--latency", "0.4,0.4")  # seconds each payment command spends on the simulated wire


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    folder = tmp_path_factory.mktemp("services")
    inventory = ServiceProcess("inventory", folder / "inventory.db", "--stock", "101=100")
    payment = ServiceProcess("payment", folder / "payment.db", *SLOW)
    with inventory, payment:
        yield inventory, payment


def start_node(journal: Path, services: tuple[ServiceProcess, ServiceProcess]) -> NodeProcess:
    inventory, payment = services
    return NodeProcess(journal, "--inventory", inventory.url, "--payment", payment.url, token=TOKEN)


def place(node: NodeProcess, request: Any, query: str = "") -> tuple[int, Any]:
    return call(node.url, "POST", f"/orders{query}", request)


def state(node: NodeProcess, order_id: str) -> str | None:
    status, view = call(node.url, "GET", f"/orders/{order_id}")
    return view["state"] if status == 200 else None


def test_orders_over_remote_services_and_an_outcome_not_known_in_time(
    tmp_path: Path, services: tuple[ServiceProcess, ServiceProcess]
) -> None:
    inventory, payment = services
    with start_node(tmp_path / "orders.db", services) as node:
        assert place(node, make_request("e1", [(101, 2)])) == (200, {"order_id": "e1", "confirmed": True})
        assert stock(inventory)[101][0] == 98
        assert payment.view("payments")["payments"]["e1"] == {"state": "captured", "amount": "19.98"}

        # Not known within 0.1 s: a 504 naming the order, which carries on to its end.
        answer = place(node, make_request("e2", [(101, 1)]), "?timeout=0.1")
        assert answer == (504, {"order_id": "e2", "error": "outcome not known in time"})
        wait_until(lambda: state(node, "e2") == "confirmed", 20.0, "the order to be confirmed")
        assert place(node, make_request("e2", [(101, 1)])) == (200, {"order_id": "e2", "confirmed": True})

        output = node.stdout() + node.stderr() + inventory.stderr() + payment.stderr()
        assert APPROVED not in output and TOKEN not in output
        journal = b"".join(p.read_bytes() for p in tmp_path.glob("orders.db*") if p.is_file())
        assert APPROVED.encode() not in journal


def test_sigterm_answers_the_order_in_flight_then_exits_0(
    tmp_path: Path, services: tuple[ServiceProcess, ServiceProcess]
) -> None:
    with start_node(tmp_path / "orders.db", services) as node:
        answers: list[tuple[int, Any]] = []
        caller = threading.Thread(target=lambda: answers.append(place(node, make_request("s1", [(101, 1)]))))
        caller.start()
        wait_until(lambda: state(node, "s1") == "pending", 10.0, "the order to be in flight")
        node.signal(signal.SIGTERM)
        caller.join(EXIT_TIMEOUT)
        assert answers == [(200, {"order_id": "s1", "confirmed": True})]
        assert node.wait(EXIT_TIMEOUT) == 0
