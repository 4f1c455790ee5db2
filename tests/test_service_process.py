"""The inventory and payment services as real processes (`saga-actors serve`), over HTTP.

Every service here is a child process on 127.0.0.1 listening on a free port
(`--port 0`, found from its readiness line), driven with urllib from the
standard library; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from saga_actors import OrderSystem, RetryPolicy
from saga_actors.actors.wire import MAX_BODY
from tests.conftest import APPROVED, DECLINED, assert_consistent, make_request, wait_until
from tests.helpers.services import (
    TOKEN,
    ServiceProcess,
    authorize,
    call,
    command,
    reserve,
    stock,
)

pytest.importorskip("aiohttp")

EXIT_TIMEOUT = 10.0  # seconds a stopped service may take to exit


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    journal = tmp_path_factory.mktemp("inventory") / "inventory.db"
    with ServiceProcess("inventory", journal, "--stock", "101=10,102=5,103=1") as service:
        yield service


@pytest.fixture(scope="module")
def payment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    journal = tmp_path_factory.mktemp("payment") / "payment.db"
    with ServiceProcess("payment", journal) as service:
        yield service


# --- the happy paths, with the views ---


def test_reserve_commit_release_and_restock_show_in_the_stock_view(inventory: ServiceProcess) -> None:
    assert stock(inventory)[101] == (10, 0, 10)
    assert reserve(inventory, "h1", (101, 2), (102, 1)) == (200, {"ok": True})
    assert stock(inventory)[101] == (10, 2, 10)
    assert command(inventory, "commit", {"order_id": "h1"}) == (200, {"ok": True})
    after_commit = stock(inventory)
    assert after_commit[101] == (8, 0, 10) and after_commit[102] == (4, 0, 5)

    assert reserve(inventory, "h2", (101, 3)) == (200, {"ok": True})
    assert command(inventory, "release", {"order_id": "h2"}) == (200, {"ok": True})
    assert stock(inventory)[101] == (8, 0, 10)
    assert command(inventory, "commit", {"order_id": "h2"}) == (422, {"ok": False, "reason": "released"})

    restock = {"stock": [{"product_id": 104, "quantity": 7}]}
    assert inventory.call("POST", "/inventory/restock", restock) == (200, {"ok": True})
    assert stock(inventory)[104] == (7, 0, 7)


def test_authorize_capture_and_void_show_in_the_payment_views(payment: ServiceProcess) -> None:
    assert authorize(payment, "p1", "19.98") == (200, {"ok": True})
    assert payment.view("payments")["payments"]["p1"] == {"state": "authorized", "amount": "19.98"}
    assert command(payment, "capture", {"order_id": "p1"}) == (200, {"ok": True})
    assert authorize(payment, "p2", "5.00") == (200, {"ok": True})
    assert command(payment, "void", {"order_id": "p2"}) == (200, {"ok": True})
    payments = payment.view("payments")["payments"]
    assert payments["p1"] == {"state": "captured", "amount": "19.98"}
    assert payments["p2"] == {"state": "voided", "amount": "5.00"}
    assert payment.view("captures") == {"payments": 1, "amounts": {"USD": "19.98"}}
    assert command(payment, "void", {"order_id": "p1"}) == (422, {"ok": False, "reason": "already_captured"})


def test_the_same_key_twice_has_one_effect(inventory: ServiceProcess, payment: ServiceProcess) -> None:
    before = stock(inventory)[102]
    assert reserve(inventory, "i1", (102, 2)) == (200, {"ok": True})
    assert reserve(inventory, "i1", (102, 2)) == (200, {"ok": True})
    assert stock(inventory)[102] == (before[0], before[1] + 2, before[2])
    assert command(inventory, "commit", {"order_id": "i1"})[0] == 200
    assert command(inventory, "commit", {"order_id": "i1"})[0] == 200
    assert stock(inventory)[102] == (before[0] - 2, before[1], before[2])

    captured = payment.view("captures")["payments"]
    assert authorize(payment, "i2") == (200, {"ok": True})
    assert authorize(payment, "i2") == (200, {"ok": True})
    assert command(payment, "capture", {"order_id": "i2"})[0] == 200
    assert command(payment, "capture", {"order_id": "i2"})[0] == 200
    assert payment.view("captures")["payments"] == captured + 1


def test_business_rejections_are_422_with_their_reason(
    inventory: ServiceProcess, payment: ServiceProcess
) -> None:
    before = stock(inventory)
    assert reserve(inventory, "r1", (103, 2)) == (422, {"ok": False, "reason": "insufficient_stock"})
    assert reserve(inventory, "r2", (999, 1)) == (422, {"ok": False, "reason": "unknown_product"})
    assert stock(inventory) == before
    assert authorize(payment, "r3", card=DECLINED) == (422, {"ok": False, "reason": "card_declined"})
    assert "r3" not in payment.view("payments")["payments"]


# --- refused before any effect ---


def test_no_token_or_a_wrong_token_is_401_and_changes_nothing(inventory: ServiceProcess) -> None:
    before = stock(inventory)
    body = {"order_id": "a1", "items": [{"product_id": 101, "quantity": 1}]}
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1], ""):
        status, answer = inventory.call("POST", "/inventory/reserve", body, key="a1:reserve", token=token)
        assert (status, answer) == (401, {"ok": False, "reason": "unauthorized"}), token
        assert inventory.call("GET", "/inventory/stock", token=token)[0] == 401
    # before the path is looked at, and before the body is read
    assert inventory.call("GET", "/nowhere", token=None)[0] == 401
    for header in (f"Basic {TOKEN}", TOKEN, f"Bearer  {TOKEN}", f"Bearer {TOKEN}x", "Bearer"):
        assert _with_authorization(inventory, header) == 401, header
    assert _with_authorization(inventory, f"bearer {TOKEN}") == 200  # the scheme's case does not matter
    big = b"x" * (MAX_BODY + 1)
    assert inventory.call("POST", "/inventory/reserve", raw=big, token="wrong")[0] == 401
    assert command(inventory, "commit", {"order_id": "a1"}) == (422, {"ok": False, "reason": "not_reserved"})
    assert stock(inventory) == before
    assert TOKEN not in inventory.stderr() + inventory.stdout()


@pytest.mark.parametrize(
    ("raw", "status", "problem"),
    [
        (b'{"order_id": "m1", "items": [', 400, "not JSON"),
        (b"\xff\xfe\x00", 400, "not JSON"),
        (b"[" * 5000 + b"]" * 5000, 400, "not JSON"),
        (b'["order_id"]', 400, "JSON object"),
        (b'{"order_id": "m1", "items": []}', 400, "items: must not be empty"),
        (b'{"order_id": "m1", "items": [{"product_id": 101, "quantity": 1}], "extra": 1}', 400, "extra"),
        (b'{"order_id": "' + b"m" * 65 + b'", "items": [{"product_id": 1, "quantity": 1}]}', 400, "order_id"),
        (b'{"order_id": "m1", "items": [{"product_id": -1, "quantity": 0}]}', 400, "items[0]"),
        (b'{"items": [{"product_id": 101, "quantity": 1}]}', 400, "order_id"),
        (b'{"order_id": "m1", "items": [{"product_id": 101, "quantity": 1}], "pad": "'
         + b"x" * MAX_BODY + b'"}', 413, "at most 65536 bytes"),
    ],
)  # fmt: skip
def test_a_malformed_or_oversized_body_is_refused_and_changes_nothing(
    inventory: ServiceProcess, raw: bytes, status: int, problem: str
) -> None:
    before = stock(inventory)
    answer_status, answer = inventory.call("POST", "/inventory/reserve", raw=raw, key="m1:reserve")
    assert answer_status == status
    assert answer["ok"] is False and any(problem in p for p in answer["problems"]), answer
    assert stock(inventory) == before
    assert command(inventory, "release", {"order_id": "m1"})[0] == 200  # a tombstone: no reservation


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("amount", "1e999999", "amount: at most"),
        ("amount", "1.005", "amount: at most two decimal places"),
        ("amount", "0", "amount: must be positive"),
        (
            "card",
            {"number": "4242424242424241", "expiry": "12/30", "cvv": "123"},
            "card.number: fails the Luhn",
        ),
        (
            "card",
            {"number": "4242424242424242", "expiry": "13/30", "cvv": "123"},
            "card.expiry: must be MM/YY",
        ),
        ("card", {"number": "4242424242424242", "expiry": "12/30", "pin": "1"}, "card.pin: not a field"),
        ("currency", "usd", "currency: must be a three-letter code"),
    ],
)
def test_an_authorize_is_checked_by_the_rules_of_an_order_and_a_bad_one_changes_nothing(
    payment: ServiceProcess, field: str, value: object, problem: str
) -> None:
    body = {
        "order_id": "bad-pay",
        "amount": "19.98",
        "currency": "USD",
        "card": {"number": "4242424242424242", "expiry": "12/30", "cvv": "123"},
        field: value,
    }
    status, answer = command(payment, "authorize", body)
    assert status == 400 and any(problem in p for p in answer["problems"]), answer
    assert "4242424242424241" not in str(answer)
    assert "bad-pay" not in payment.view("payments")["payments"]


def test_a_request_that_is_not_http_is_not_echoed(payment: ServiceProcess) -> None:
    from urllib.parse import urlsplit

    where = urlsplit(payment.url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as conn:
        conn.sendall(b"GARBAGE 4242424242424242\r\n\r\n")
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    assert b"4242" not in answer


def test_a_wrong_idempotency_key_an_unknown_path_or_method_change_nothing(inventory: ServiceProcess) -> None:
    before = stock(inventory)
    body = {"order_id": "k1", "items": [{"product_id": 101, "quantity": 1}]}
    for key in (None, "k2:reserve", "k1:commit", "k1"):
        status, answer = inventory.call("POST", "/inventory/reserve", body, key=key)
        assert status == 400 and "Idempotency-Key" in answer["problems"][0], key
    assert inventory.call("POST", "/inventory/steal", body, key="k1:steal") == (
        404,
        {"ok": False, "reason": "not_found"},
    )
    assert inventory.call("POST", "/payment/authorize", body, key="k1:authorize")[0] == 404
    assert inventory.call("GET", "/inventory/reserve")[0] == 405
    assert inventory.call("POST", "/inventory/stock", body)[0] == 405
    assert stock(inventory) == before


def test_a_service_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    empty = tmp_path / "empty-token"
    empty.write_text(" \n")
    for extra, token in (((), None), ((), "  "), (("--token-file", str(empty)), None)):
        child = ServiceProcess("inventory", tmp_path / "inventory.db", *extra, token=token).spawn()
        assert child.wait(EXIT_TIMEOUT) == 2
        assert child.stdout() == ""
        (line,) = child.stderr().splitlines()
        assert "token" in line, line
    assert not (tmp_path / "inventory.db").exists()


def test_a_journal_in_use_by_a_running_service_is_refused(inventory: ServiceProcess) -> None:
    second = ServiceProcess("inventory", inventory.journal).spawn()
    assert second.wait(EXIT_TIMEOUT) == 2
    (line,) = second.stderr().splitlines()
    assert "--journal" in line and "in use" in line, line
    assert stock(inventory)[101][2] == 10  # the first one carries on


def test_the_token_may_come_from_a_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-the-file\n")
    with ServiceProcess(
        "payment", tmp_path / "p.db", "--token-file", str(token_file), token=TOKEN
    ) as service:
        assert service.call("GET", "/payment/captures", token="from-the-file")[0] == 200
        assert service.call("GET", "/payment/captures", token=TOKEN)[0] == 401


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "payment", "--port", "0", "--journal", "j.db", "--stock", "1=2"], "--stock"),
        (["serve", "inventory", "--port", "0", "--journal", "j.db", "--failure-rate", "2"], "failure_rate"),
        (["serve", "inventory", "--port", "0", "--journal", "j.db", "--latency", "0.1"], "--latency"),
        (["serve", "inventory", "--port", "70000", "--journal", "j.db"], "--port"),
        (["serve", "inventory", "--port", "0", "--journal", "."], "directory"),
        (["serve", "inventory", "--port", "0", "--journal", "no/such/folder/j.db"], "does not exist"),
        (
            ["serve", "inventory", "--port", "0", "--journal", "j.db", "--max-connections", "0"],
            "--max-connections",
        ),
        (["serve", "shipping", "--port", "0", "--journal", "j.db"], "invalid choice"),
        (["serve", "inventory", "--journal", "j.db"], "--port"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_status_2(tmp_path: Path, args: list[str], says: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "saga_actors", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, env=_env_with_token(),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert says in line, line
    assert not (tmp_path / "j.db").exists()


def test_without_aiohttp_the_command_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['aiohttp'] = None; from saga_actors.cli import main;"
        f"sys.exit(main(['serve', 'inventory', '--port', '0', '--journal', {str(tmp_path / 'j.db')!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=_env_with_token()
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "pip install 'saga-actors[http]'" in line


def test_failure_rate_1_answers_503_and_changes_nothing(tmp_path: Path) -> None:
    args = ("--stock", "101=5", "--failure-rate", "1", "--metrics-port", "0")
    with ServiceProcess("inventory", tmp_path / "i.db", *args) as service:
        for order_id in ("f1", "f2"):
            assert reserve(service, order_id, (101, 1)) == (503, {"ok": False, "reason": "unavailable"})
            assert command(service, "release", {"order_id": order_id})[0] == 503
        assert stock(service) == {101: (5, 0, 5)}
        assert service.call("GET", "/inventory/stock", token="wrong")[0] == 401
        # the service's own metrics count every request by operation and status
        metrics = _metrics(_metrics_port(service))
        assert metrics['saga_actors_service_requests_total{operation="reserve",status="503"}'] == 2
        assert metrics['saga_actors_service_requests_total{operation="release",status="503"}'] == 2
        assert metrics['saga_actors_service_requests_total{operation="stock",status="200"}'] == 1
        assert metrics['saga_actors_service_requests_total{operation="stock",status="401"}'] == 1
        assert metrics['saga_actors_service_request_seconds_count{operation="reserve"}'] == 2
        assert metrics["saga_actors_service_requests_in_flight"] == 0


# --- durability and stopping ---


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Reserves race a SIGKILL; after a restart on the same journal every acknowledged one holds."""
    journal = tmp_path / "inventory.db"
    service = ServiceProcess("inventory", journal, "--stock", "101=1000").start()
    acknowledged: list[str] = []
    enough = threading.Event()

    def place(n: int) -> None:
        try:
            status, _ = reserve(service, f"k{n}", (101, 1 + n % 3))
        except OSError:  # the process is gone: no answer
            return
        if status == 200:
            acknowledged.append(f"k{n}")
            if len(acknowledged) >= 20:
                enough.set()

    try:
        with ThreadPoolExecutor(8) as pool:
            for n in range(120):
                pool.submit(place, n)
            assert enough.wait(30)
            service.kill()  # requests still in flight die with it
    finally:
        service.kill()
    assert service.proc is not None and service.proc.returncode == -signal.SIGKILL
    held = {f"k{n}": 1 + n % 3 for n in range(120)}
    with ServiceProcess("inventory", journal, "--stock", "101=1000") as restarted:
        on_hand, reserved, received = stock(restarted)[101]
        assert (on_hand, received) == (1000, 1000)  # stocked once: the journal was not empty
        assert reserved >= sum(held[o] for o in acknowledged)
        for order_id in acknowledged:  # each one is held: its commit succeeds
            assert command(restarted, "commit", {"order_id": order_id}) == (200, {"ok": True}), order_id


def test_sigterm_drains_the_requests_in_flight_and_exits_0(tmp_path: Path) -> None:
    journal = tmp_path / "inventory.db"
    service = ServiceProcess(
        "inventory", journal, "--stock", "101=10", "--latency", "0.5,0.5", "--metrics-port", "0"
    ).start()
    try:
        metrics_port = _metrics_port(service)
        result: list[Any] = []
        in_flight = threading.Thread(target=lambda: result.append(reserve(service, "t1", (101, 4))))
        in_flight.start()
        _wait_for_metric(metrics_port, "saga_actors_service_requests_in_flight", 1.0)
        service.signal(signal.SIGTERM)
        in_flight.join(EXIT_TIMEOUT)
        assert result == [(200, {"ok": True})]  # answered, not cut off
        assert service.wait(EXIT_TIMEOUT) == 0
    finally:
        service.kill()
    assert "Traceback" not in service.stderr()
    with ServiceProcess("inventory", journal) as restarted:  # the journal reopens, unlocked
        assert stock(restarted)[101] == (10, 4, 10)


def test_sigterm_on_an_idle_service_exits_0_at_once(tmp_path: Path) -> None:
    service = ServiceProcess("payment", tmp_path / "p.db").start()
    try:
        service.signal(signal.SIGTERM)
        assert service.wait(3) == 0
    finally:
        service.kill()


def test_the_card_number_is_never_journaled_logged_or_printed(tmp_path: Path) -> None:
    """Authorizations, some crashing the actor mid-request (their answer is 504), a malformed one,
    a declined one, one that is not HTTP: the card number is nowhere in the journal's bytes or the
    output."""
    journal = tmp_path / "payment.db"
    args = ("--crash-rate", "0.3", "--seed", "3", "--request-timeout", "0.5")
    with ServiceProcess("payment", journal, *args) as service:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda n: authorize(service, f"c{n}", card=APPROVED)[0], range(10)))
        assert set(statuses) <= {200, 503, 504} and 504 in statuses and 200 in statuses  # 503: restarting
        # retried while the outcome is unknown or refused, as a saga would (the same key each time)
        assert _answered(lambda: authorize(service, "c-declined", card=DECLINED)) == 422
        malformed = {"order_id": "c-bad", "amount": "1", "currency": APPROVED, "card": {"number": APPROVED}}
        status, answer = command(service, "authorize", malformed)
        assert status == 400 and APPROVED not in json.dumps(answer)
        authorized = [f"c{n}" for n, status in enumerate(statuses) if status == 200]
        assert _answered(lambda: command(service, "capture", {"order_id": authorized[0]})) == 200
        # not HTTP: aiohttp's parser refuses it, and its error would quote the bytes
        host, port = service.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(f"POST /payment/authorize HTTP/1.1\r\nX-Card: {APPROVED}\x00\r\n\r\n".encode())
            assert raw.recv(100).startswith(b"HTTP/1.0 400")
    assert service.wait(EXIT_TIMEOUT) == 0
    files = list(tmp_path.iterdir())
    assert journal in files
    for path in files:
        assert APPROVED.encode() not in path.read_bytes(), path
    assert APPROVED not in service.stdout() + service.stderr()
    assert "crashed" in service.stderr()  # the crashes were logged (without the card)
    assert "Traceback" not in service.stderr()  # a simulated crash is one line


def _finished(system: OrderSystem) -> int:
    counts = system.metrics()
    return counts["orders_confirmed"] + counts["orders_cancelled"]


def _answered(send: Callable[[], tuple[int, Any]], attempts: int = 30) -> int:
    """The first status that is an answer: retried (at most `attempts` times) on 503 and 504."""
    for _ in range(attempts):
        status, _ = send()
        if status not in (503, 504):
            return status
    raise AssertionError(f"no answer in {attempts} attempts")


def _with_authorization(service: ServiceProcess, header: str) -> int:
    """The status of the stock view asked with this Authorization header."""
    request = urllib.request.Request(service.url + "/inventory/stock", headers={"Authorization": header})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def _env_with_token() -> dict[str, str]:
    return {**os.environ, "SAGA_ACTORS_TOKEN": TOKEN}


def _metrics_port(service: ServiceProcess) -> int:
    """The port of the service's metrics endpoint (`--metrics-port 0`), as it logs it."""
    return int(service.wait_for_output(re.compile(r"metrics on port (\d+)"), 10, stderr=True)[1])


def _metrics(port: int) -> dict[str, float]:
    """One scrape of a metrics endpoint: {series with its labels: value}."""
    status, text = call(f"http://127.0.0.1:{port}", "GET", "/metrics", token=None)
    assert status == 200 and isinstance(text, bytes)
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in text.decode().splitlines())
        if name and not name.startswith("#")
    }


def _wait_for_metric(port: int, name: str, value: float) -> None:
    """Poll the service's metrics endpoint until `name` reads `value` (bounded)."""
    wait_until(lambda: _metrics(port).get(name) == value, 10, f"{name} to read {value}")


# --- the engine over the service processes ---


def test_orders_over_service_processes_survive_a_sigkill_and_a_sigstop(tmp_path: Path) -> None:
    """OrderSystem(inventory=URL, payment=URL) over both services as processes, with transient
    failures: the inventory is SIGKILLed mid-run and restarted on its journal and port; the payment
    is SIGSTOPped for longer than the attempt timeout, then SIGCONTed (its late replies and effects
    arrive). Every order ends confirmed or cancelled, and every invariant holds across the
    processes: stock and money conserved, nothing left reserved or authorized, nothing twice."""
    inventory_args = ("--stock", "101=40,102=40", "--failure-rate", "0.1", "--seed", "1")
    inventory = ServiceProcess("inventory", tmp_path / "inventory.db", *inventory_args).start()
    payment = ServiceProcess("payment", tmp_path / "payment.db", "--failure-rate", "0.1", "--seed", "2")
    payment.start()
    retry = RetryPolicy(initial_interval=0.01, maximum_interval=0.1, maximum_attempts=30, attempt_timeout=0.4)
    requests = [
        make_request(
            f"e{n}",
            [(101 + n % 2, 1 + n % 3)] if n % 10 else [(101, 50)],  # every tenth: more than there is
            card=DECLINED if n % 7 == 3 else APPROVED,
        )
        for n in range(60)
    ]
    try:
        system = OrderSystem(
            journal_path=tmp_path / "orders.db",
            inventory=inventory.url,
            payment=payment.url,
            service_token=TOKEN,
            retry=retry,
        )
        with system:
            futures = [system.submit(r) for r in requests[:30]]
            wait_until(lambda: _finished(system) >= 10, 30, "10 orders finished")
            inventory.kill()
            inventory = ServiceProcess(
                "inventory", inventory.journal, *inventory_args, port=int(inventory.url.rsplit(":", 1)[1])
            ).start()
            futures += [system.submit(r) for r in requests[30:]]
            payment.signal(signal.SIGSTOP)
            threading.Event().wait(2 * retry.attempt_timeout)  # stopped longer than an attempt may take
            payment.signal(signal.SIGCONT)
            outcomes = [f.get(60) for f in futures]
            assert system.wait_idle(30)
            assert True in outcomes and False in outcomes
            assert system.metrics()["retries"] > 0
            assert {system.order(r["order_id"]).state for r in requests} <= {"confirmed", "cancelled"}
            assert_consistent(system, {101: 40, 102: 40})
    finally:
        payment.signal(signal.SIGCONT)
        inventory.kill()
        payment.kill()


def test_a_flood_of_half_sent_requests_does_not_lock_out_a_real_one(tmp_path: Path) -> None:
    """60 connections that never finish their headers, against a cap of 20: the service closes
    what is over the cap at once and the half-sent ones within its idle timeout (10 s), so a real
    request gets through while the flood is still connected."""
    from urllib.parse import urlsplit

    with ServiceProcess(
        "inventory", tmp_path / "flood.db", "--stock", "101=5", "--max-connections", "20"
    ) as service:
        where = urlsplit(service.url)
        sockets = []
        try:
            for _ in range(60):
                conn = socket.create_connection((where.hostname, where.port), timeout=10)
                conn.sendall(b"POST /inventory/reserve HTTP/1.1\r\nHost: x\r\n")
                sockets.append(conn)

            def served() -> bool:
                try:
                    return service.call("GET", "/inventory/stock", timeout=2)[0] == 200
                except OSError:
                    return False  # closed over the cap: try again

            wait_until(served, timeout=30, what="a real request served during the flood")
        finally:
            for conn in sockets:
                conn.close()
