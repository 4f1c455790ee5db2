"""`saga-actors node` as a real process, its inventory and payment in-process: orders over HTTP.

One node (`NodeProcess`, a free port of 127.0.0.1, a SQLite journal in a temporary folder)
serves the module; each test places orders with ids of its own. Driven with urllib from the
standard library: the HTTP answers, not a client library, are the contract. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from saga_actors._cli import without_password
from saga_actors.actors.processes import NodeProcess
from saga_actors.actors.wire import MAX_BODY
from tests.conftest import APPROVED, DECLINED, make_request
from tests.helpers.services import TOKEN, call

pytest.importorskip("aiohttp")

EXIT_TIMEOUT = 15.0  # seconds a stopped node may take to exit
BAD_CARD = "4242424242424241"  # fails the Luhn check


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    journal = tmp_path_factory.mktemp("node") / "orders.db"
    with NodeProcess(journal, "--stock", "101=1000,102=5", token=TOKEN) as process:
        yield process


def place(node: NodeProcess, request: Any, query: str = "", **kwargs: Any) -> tuple[int, Any]:
    return call(node.url, "POST", f"/orders{query}", request, **kwargs)


def order(node: NodeProcess, order_id: str, **kwargs: Any) -> tuple[int, Any]:
    return call(node.url, "GET", f"/orders/{order_id}", **kwargs)


# --- orders and their views ---


def test_an_order_is_confirmed_and_its_view_says_so(node: NodeProcess) -> None:
    assert place(node, make_request("h1", [(101, 2)])) == (200, {"order_id": "h1", "confirmed": True})
    assert order(node, "h1") == (
        200,
        {
            "order_id": "h1",
            "state": "confirmed",
            "reason": None,
            "amount": "19.98",
            "items": [{"product_id": 101, "quantity": 2}],
        },
    )
    assert order(node, "never-placed") == (404, {"error": "no such order"})
    # Not an order id at all (a NUL, a control character, too long): no order has it (not a 500).
    for not_an_id in ("%00", "a%0Ab", "x" * 300):
        assert order(node, not_an_id) == (404, {"error": "no such order"}), not_an_id


def test_a_declined_card_is_an_answer_not_an_error(node: NodeProcess) -> None:
    assert place(node, make_request("d1", card=DECLINED)) == (200, {"order_id": "d1", "confirmed": False})
    status, view = order(node, "d1")
    assert status == 200 and (view["state"], view["reason"]) == ("cancelled", "card_declined")


def test_too_little_stock_is_a_rollback_with_its_reason(node: NodeProcess) -> None:
    assert place(node, make_request("s1", [(102, 6)])) == (200, {"order_id": "s1", "confirmed": False})
    assert order(node, "s1")[1]["reason"] == "insufficient_stock"


def test_the_same_request_twice_gets_the_same_answer(node: NodeProcess) -> None:
    for order_id, card, confirmed in (("r1", APPROVED, True), ("r2", DECLINED, False)):
        request = make_request(order_id, [(101, 1)], card=card)
        first = place(node, request)
        assert first == (200, {"order_id": order_id, "confirmed": confirmed})
        assert place(node, request) == first


def test_an_order_id_reused_for_another_order_is_a_409(node: NodeProcess) -> None:
    assert place(node, make_request("c1", [(101, 1)]))[0] == 200
    answer = place(node, make_request("c1", [(101, 3)]))
    assert answer == (409, {"error": "idempotency conflict", "order_id": "c1"})
    assert order(node, "c1")[1]["items"] == [{"product_id": 101, "quantity": 1}]


def test_an_invalid_order_is_a_422_naming_each_problem_without_the_card(node: NodeProcess) -> None:
    request = make_request("v1", [(101, 0)], card=BAD_CARD, expiry="13/30", cvv="12")
    request["payment_info"]["coupon"] = APPROVED  # an unexpected field holding a card number
    status, body = place(node, request)
    assert status == 422 and body["error"] == "invalid order"
    problems = "\n".join(body["problems"])
    for field in ("items[0].quantity", "card_number", "expiry", "cvv", "coupon"):
        assert field in problems, (field, problems)
    raw = json.dumps(body)
    assert BAD_CARD not in raw and APPROVED not in raw and "4242" not in raw
    assert order(node, "v1")[0] == 404  # nothing was placed
    status, body = place(node, ["not", "an", "object"])
    assert status == 422 and body["problems"]


# --- refused before anything is placed ---


def test_without_the_token_every_path_but_health_is_a_401(node: NodeProcess) -> None:
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1], ""):
        assert place(node, make_request("a1"), token=token) == (401, {"error": "unauthorized"})
        assert order(node, "h1", token=token)[0] == 401
        assert call(node.url, "GET", "/nowhere", token=token)[0] == 401  # before the path is looked at
    assert call(node.url, "GET", "/health", token=None) == (200, {"status": "running"})
    assert order(node, "a1")[0] == 404
    assert TOKEN not in node.stdout() + node.stderr()


def test_a_body_that_is_not_json_is_a_400(node: NodeProcess) -> None:
    for raw in (b'{"order_id": "j1", "items": [', b"\xff\xfe", b"[" * 5000 + b"]" * 5000):
        status, body = place(node, None, raw=raw)
        assert status == 400 and body["error"] == "malformed request", raw[:20]
        assert body["problems"][0].startswith("the body is not JSON")


@pytest.mark.parametrize(
    "query", ["?timeout=0", "?timeout=-1", "?timeout=abc", "?timeout=nan", "?timeout=inf", "?timeout=301",
              "?timeout=1e999", "?timeout=", "?timeout=1&timeout=2"],
)  # fmt: skip
def test_a_timeout_that_is_not_a_number_of_seconds_up_to_300_is_a_400(node: NodeProcess, query: str) -> None:
    status, body = place(node, make_request("t1"), query)
    assert status == 400 and body["error"] == "malformed request"
    assert body["problems"][0].startswith("timeout must be a number of seconds in (0, 300]")
    assert order(node, "t1")[0] == 404


def test_an_unknown_query_parameter_is_a_400_naming_it(node: NodeProcess) -> None:
    status, body = place(node, make_request("q1"), f"?wait=5&card={APPROVED}")
    assert status == 400 and "'card', 'wait'" in body["problems"][0]
    assert APPROVED not in json.dumps(body)
    assert place(node, make_request("q2"), "?timeout=30") == (200, {"order_id": "q2", "confirmed": True})


def test_a_body_over_64_kib_is_a_413(node: NodeProcess) -> None:
    status, body = place(node, None, raw=b"x" * (MAX_BODY + 1))
    assert status == 413 and body["error"] == "body too large"


def test_unknown_paths_and_methods_are_404_and_405(node: NodeProcess) -> None:
    assert call(node.url, "GET", "/nowhere") == (404, {"error": "not found"})
    assert call(node.url, "DELETE", "/orders") == (405, {"error": "method not allowed"})
    assert call(node.url, "POST", "/health")[0] == 405


def test_a_request_that_is_not_http_is_not_echoed(node: NodeProcess) -> None:
    import socket

    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(f"POST /orders HTTP/1.1\r\nHost: x\r\nX-Card: {APPROVED}\x01\r\n\r\n".encode())
        answer = connection.recv(65536)
    assert b" 400 " in answer.split(b"\r\n")[0] and APPROVED.encode() not in answer


# --- secrets ---


def test_the_card_number_is_never_in_the_output_or_the_journal(node: NodeProcess) -> None:
    card = "5555555555554444"
    assert place(node, make_request("k1", card=card, cvv="987"))[1]["confirmed"] is True
    assert place(node, make_request("k2", card=card, expiry="13/30"))[0] == 422
    output = node.stdout() + node.stderr()
    assert card not in output and "5555 5555" not in output
    journal = b"".join(p.read_bytes() for p in node.journal.parent.glob("orders.db*") if p.is_file())
    assert card.encode() not in journal


def test_passwords_in_journal_urls_are_never_shown() -> None:
    shown = without_password("postgresql://app:s3cret@db:5432/orders?sslmode=require&password=s3cret")
    assert shown == "postgresql://app:***@db:5432/orders?sslmode=require&password=***"
    assert without_password("orders.db") == "orders.db"
    assert without_password("postgresql://app@db/orders") == "postgresql://app@db/orders"


# --- the process: readiness, drain, signals, bad options ---


def test_the_readiness_line_names_the_url_and_the_journal(node: NodeProcess) -> None:
    assert node.stdout() == f"saga-actors node listening on {node.url} (journal {node.journal})\n"


def test_sigterm_drains_and_exits_0_and_the_orders_survive(tmp_path: Path) -> None:
    journal = tmp_path / "orders.db"
    with NodeProcess(journal, "--stock", "101=10", token=TOKEN) as first:
        assert place(first, make_request("g1"))[0] == 200
        first.signal(signal.SIGTERM)
        assert first.wait(EXIT_TIMEOUT) == 0
        assert "node stopped" in first.stderr()
    with NodeProcess(journal, token=TOKEN) as second:  # the same journal: the order is there
        assert order(second, "g1")[1]["state"] == "confirmed"
        second.signal(signal.SIGINT)  # Ctrl-C
        assert second.wait(EXIT_TIMEOUT) == 130


def test_a_paused_node_answers_once_resumed(tmp_path: Path) -> None:
    with NodeProcess(tmp_path / "orders.db", "--stock", "101=10", token=TOKEN) as paused:
        paused.pause()
        answers: list[tuple[int, Any]] = []
        caller = threading.Thread(target=lambda: answers.append(place(paused, make_request("p1"))))
        caller.start()
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            call(paused.url, "GET", "/health", timeout=0.3)  # connected, never answered
        paused.resume()
        caller.join(EXIT_TIMEOUT)
        assert answers == [(200, {"order_id": "p1", "confirmed": True})]


def _node(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "SAGA_ACTORS_TOKEN"}
    environment.update(env if env is not None else {"SAGA_ACTORS_TOKEN": TOKEN})
    return subprocess.run(
        [sys.executable, "-m", "saga_actors", "node", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["--journal", "{tmp}/o.db", "--port", "0"], {}, "no access token"),
        (["--journal", "{tmp}/no/o.db", "--port", "0"], None, "--journal {tmp}/no/o.db: cannot be created"),
        (["--journal", "{tmp}", "--port", "0"], None, "a directory, not a journal file"),
        (["--journal", "{tmp}/o.db", "--port", "70000"], None, "--port must be in [0, 65535]"),
        (["--journal", "{tmp}/o.db", "--port", "0", "--stock", "1=2", "--inventory", "http://127.0.0.1:1"],
         None, "--stock is for an in-process inventory"),
        (["--journal", "{tmp}/o.db", "--port", "0", "--stock", "x"], None, "is not PRODUCT_ID=UNITS"),
        (["--journal", "{tmp}/o.db", "--port", "0", "--inventory", "ftp://x"], None, "inventory"),
        (["--journal", "{tmp}/o.db"], None, "the following arguments are required: --port"),
    ],
)  # fmt: skip
def test_a_node_that_cannot_start_as_asked_says_why_in_one_line_and_exits_2(
    tmp_path: Path, args: list[str], env: dict[str, str] | None, said: str
) -> None:
    done = _node(*(a.replace("{tmp}", str(tmp_path)) for a in args), env=env)
    assert done.returncode == 2, done.stderr
    assert said.replace("{tmp}", str(tmp_path)) in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""


def test_a_postgresql_journal_is_refused_without_postgresql_support_and_never_shows_its_password(
    tmp_path: Path,
) -> None:
    import importlib.util

    if importlib.util.find_spec("saga_actors.persistence.postgres") is not None:
        pytest.skip("this saga-actors has a PostgreSQL journal")
    done = subprocess.run(
        [sys.executable, "-m", "saga_actors", "node", "--port", "0", "--journal", "postgresql://app:pw9@db/o"],
        capture_output=True, text=True, env={**os.environ, "SAGA_ACTORS_TOKEN": TOKEN}, cwd=tmp_path,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    said = "saga-actors node: --journal postgresql://app:***@db/o: this saga-actors has no PostgreSQL journal"
    assert done.stderr == said + "\n"
    assert list(tmp_path.iterdir()) == []  # not taken for a file path


def test_a_journal_that_is_not_a_journal_is_refused(tmp_path: Path) -> None:
    not_a_journal = tmp_path / "notes.txt"
    not_a_journal.write_text("hello")
    done = _node("--journal", str(not_a_journal), "--port", "0")
    assert done.returncode == 2 and "not a journal" in done.stderr, done.stderr
