"""The engine against remote services: `OrderSystem(inventory=URL, payment=URL, service_token=...)`.

The services are the ones a user could write with the standard library
alone (`tests/helpers/stdlib_services.py`), from the protocol's documentation:
proof that the protocol, not our server, is the contract. They run in this
process on ephemeral ports of 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from saga_actors import FaultPlan, OrderSystem, RetryPolicy
from saga_actors.sagas.remote import RemoteServiceError
from tests.conftest import APPROVED, DECLINED, assert_consistent, make_request, wait_until
from tests.helpers.stdlib_services import Inventory, Payment, StdlibService, start_services

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("aiohttp") is None, reason="needs aiohttp: pip install -e '.[test,http]'"
)

TOKEN = "s3cret-token-for-tests"
STOCK = {101: 10, 102: 5}
# Fast retries; an attempt unanswered for 0.3 s is retried (the services answer in about 1 ms).
RETRY = RetryPolicy(initial_interval=0.01, maximum_interval=0.05, maximum_attempts=6, attempt_timeout=0.3)


@pytest.fixture
def services() -> Iterator[tuple[StdlibService, StdlibService]]:
    inventory, payment = start_services(TOKEN, STOCK)
    try:
        yield inventory, payment
    finally:
        inventory.stop()
        payment.stop()


def remote_system(inventory: StdlibService, payment: StdlibService, **options: object) -> OrderSystem:
    options.setdefault("retry", RETRY)
    options.setdefault("service_token", TOKEN)
    return OrderSystem(inventory=inventory.url, payment=payment.url, **options)  # type: ignore[arg-type]


def test_happy_path_over_http(services):
    inventory, payment = services
    with remote_system(inventory, payment) as system:
        assert system.place_order(make_request("ord-1", [(101, 2)]), timeout=5) is True
        assert system.order("ord-1").state == "confirmed"
        stock = system.inventory()[101]
        assert (stock.on_hand, stock.reserved, stock.received) == (8, 0, 10)
        view = system.payments()["ord-1"]
        assert (view.state, view.amount) == ("captured", Decimal("19.98"))
        assert system.wait_idle(5)
        assert_consistent(system)
    # One call per command, each with its idempotency key; the effects happened once.
    assert sorted(inventory.keys) == ["ord-1:commit", "ord-1:reserve"]
    assert sorted(payment.keys) == ["ord-1:authorize", "ord-1:capture"]
    assert inventory.state.effects == payment.state.effects == 2


@pytest.mark.parametrize(
    ("request_", "reason", "payment_state"),
    [
        (make_request("o", [(101, 11)]), "insufficient_stock", {None, "voided"}),
        (make_request("o", [(999, 1)]), "unknown_product", {None, "voided"}),
        (make_request("o", [(101, 1), (999, 1)]), "unknown_product", {None, "voided"}),
        (make_request("o", card=DECLINED), "card_declined", {None}),
    ],
)
def test_business_rejections_roll_back_over_http(services, request_, reason, payment_state):
    inventory, payment = services
    with remote_system(inventory, payment) as system:
        assert system.place_order(request_, timeout=5) is False
        view = system.order("o")
        assert (view.state, view.reason) == ("cancelled", reason)
        assert system.inventory()[101].reserved == 0
        assert getattr(system.payments().get("o"), "state", None) in payment_state
        assert system.wait_idle(5)
        assert_consistent(system)
    assert inventory.state.reserved == {101: 0, 102: 0}


def test_duplicates_are_answered_once(services):
    inventory, payment = services
    with remote_system(inventory, payment) as system:
        request = make_request("dup", [(101, 1)])
        assert system.place_order(request, timeout=5) is True
        assert system.place_order(request, timeout=5) is True  # answered from the first outcome
        with ThreadPoolExecutor(30) as pool:  # and 30 callers at once for another order
            twin = make_request("twin", [(101, 1)])
            assert all(pool.map(lambda _: system.place_order(twin, timeout=5), range(30)))
        assert system.wait_idle(5)
        assert_consistent(system)
        assert system.inventory()[101].on_hand == 8
    assert sorted(inventory.keys) == ["dup:commit", "dup:reserve", "twin:commit", "twin:reserve"]
    assert payment.state.captured_count == 2


def test_no_oversell_under_200_concurrent_orders(services):
    inventory, payment = services
    inventory.state.command("restock", {"stock": [{"product_id": 7, "quantity": 50}]})
    with remote_system(inventory, payment) as system:
        futures = [system.submit(make_request(f"c-{n}", [(7, 1)], amount="1.00")) for n in range(200)]
        outcomes = [future.get(20) for future in futures]
        assert outcomes.count(True) == 50
        assert {system.order(f"c-{n}").reason for n in range(200)} == {None, "insufficient_stock"}
        assert system.wait_idle(5)
        stock = system.inventory()[7]
        assert (stock.on_hand, stock.reserved) == (0, 0)
        assert_consistent(system)


def test_thirty_percent_503_still_consistent():
    inventory, payment = start_services(TOKEN, {101: 1000, 7: 30}, refuse_rate=0.3)
    try:
        with remote_system(inventory, payment) as system:
            futures = [
                system.submit(make_request(f"f-{n}", [(7 if n % 2 else 101, 1)], amount="2.50"))
                for n in range(120)
            ]
            outcomes = [future.get(20) for future in futures]
            assert system.wait_idle(20)
            assert outcomes.count(True) >= 30  # the scarce product sells out, the other one does not
            assert system.metrics()["retries"] > 0
            assert_consistent(system)
        assert inventory.misbehaved["503"] > 0 and payment.misbehaved["503"] > 0
    finally:
        inventory.stop()
        payment.stop()


def test_unknown_outcomes_504_and_resets_are_retried_with_the_same_key_or_compensated(caplog):
    """A 504 after the effect, a reset before or after it: the saga cannot know, so it retries with
    the same idempotency key (the service answers a repeat with its first result) or, rolling
    back, compensates. No effect is applied twice, nothing is left half-done."""
    caplog.set_level(logging.DEBUG)
    inventory, payment = start_services(TOKEN, {101: 1000, 7: 20}, unknown_rate=0.15)
    try:
        with remote_system(inventory, payment) as system:
            futures = [
                system.submit(make_request(f"u-{n}", [(7 if n % 3 == 0 else 101, 1)], amount="3.00"))
                for n in range(60)
            ]
            outcomes = [future.get(30) for future in futures]
            assert system.wait_idle(30)
            assert_consistent(system)
            confirmed = outcomes.count(True)
            assert payment.state.captured_count == confirmed
            assert payment.state.captured == {"USD": Decimal("3.00") * confirmed}
        for service in (inventory, payment):
            assert set(service.misbehaved) == {"504-after", "reset-before", "reset-after"}
            repeated = {k for k in service.keys if service.keys.count(k) > 1}
            assert repeated, "an unknown outcome is retried with the same key"
    finally:
        inventory.stop()
        payment.stop()
    assert TOKEN not in caplog.text and APPROVED not in caplog.text  # never logged


@pytest.mark.parametrize("down", ["inventory", "payment"])
def test_a_service_that_is_down_rolls_orders_back_and_nothing_is_left_once_it_is_back(services, down):
    inventory, payment = services
    service = inventory if down == "inventory" else payment
    service.stop()  # its port is known and refuses connections
    with remote_system(inventory, payment) as system:
        futures = [system.submit(make_request(f"d-{n}", [(101, 1)])) for n in range(5)]
        assert [future.get(10) for future in futures] == [False] * 5
        assert {system.order(f"d-{n}").reason for n in range(5)} == {"retries_exhausted"}
        view = system.inventory if down == "inventory" else system.payments
        with pytest.raises(RemoteServiceError, match=rf"the {down} service did not answer: .*unreachable"):
            view()
        assert system.wait_idle(5)
        service.start()  # back, on the same port, with its state
        assert_consistent(system)
    assert inventory.state.reserved == {101: 0, 102: 0}
    assert all(p["state"] != "authorized" for p in payment.state.payments.values())


def test_a_compensation_waits_for_a_service_that_acted_then_went_down(services):
    """The payment authorizes but its answers are lost; the saga gives up and voids; the service
    goes down meanwhile. Once it is back the void goes through: nothing is left authorized."""
    inventory, payment = services
    payment.unknown_rate, payment.unknown_modes = 1.0, ("reset-after",)
    with remote_system(inventory, payment) as system:
        future = system.submit(make_request("half", [(101, 1)]))
        wait_until(lambda: payment.state.payments.get("half", {}).get("state") == "authorized", what="auth")
        wait_until(lambda: payment.requests.get("void", 0) >= 1, timeout=10, what="a void")
        payment.stop()
        payment.unknown_rate = 0.0
        saga = system.saga("half")
        assert saga is not None and saga.phase == "compensating"
        payment.start()
        assert future.get(10) is False
        assert system.order("half").reason == "retries_exhausted"
        assert system.wait_idle(5)
        assert_consistent(system)
    assert payment.state.payments["half"]["state"] == "voided"


def test_a_wrong_token_is_refused_before_any_effect_and_the_order_rolls_back(services):
    inventory, payment = services
    with remote_system(inventory, payment, service_token="not-the-token") as system:
        assert system.place_order(make_request("t-1"), timeout=30) is False
        # each attempt refused before any effect, like "unavailable": retried, then rolled back
        assert system.order("t-1").reason == "retries_exhausted"
        with pytest.raises(RemoteServiceError, match=r"401 \(is service_token right\?\)"):
            system.inventory()
    assert inventory.state.reservations == {} and payment.state.payments == {}
    assert inventory.state.effects == payment.state.effects == 0


def test_the_token_comes_from_the_environment(services, monkeypatch):
    inventory, payment = services
    monkeypatch.setenv("SAGA_ACTORS_TOKEN", TOKEN)
    with OrderSystem(inventory=inventory.url, payment=payment.url, retry=RETRY) as system:
        assert system.place_order(make_request("env"), timeout=5) is True


def test_restock_and_views_over_http(services):
    inventory, payment = services
    with remote_system(inventory, payment) as system:
        system.restock({101: 5, 300: 2})
        assert {p: (v.on_hand, v.received) for p, v in system.inventory().items()} == {
            101: (15, 15),
            102: (5, 5),
            300: (2, 2),
        }
        with pytest.raises(ValueError, match="invalid restock"):
            system.restock({101: -1})
        assert_consistent(system)


def test_a_remote_participant_killed_mid_run_loses_no_answer(services):
    inventory, payment = services
    with remote_system(inventory, payment) as system:
        futures = [system.submit(make_request(f"k-{n}", [(101, 1)], amount="1.00")) for n in range(10)]
        system.kill("inventory")
        system.kill("payment")
        assert [future.get(10) for future in futures] == [True] * 10
        assert system.wait_idle(5)
        assert_consistent(system)


def test_a_client_whose_loop_dies_is_reopened_under_supervision(services):
    inventory, payment = services
    with remote_system(inventory, payment) as system:
        client = system._remote.client
        loop = client._loop
        loop.call_soon_threadsafe(loop.stop)  # as if the loop's thread died
        wait_until(lambda: client._loop not in (None, loop), what="a new loop")
        assert system.place_order(make_request("again", [(101, 1)]), timeout=5) is True
        assert system.metrics()["restarts"] >= 1
        assert_consistent(system)


def test_one_service_remote_and_the_other_in_process(services):
    inventory, _payment = services
    with OrderSystem(
        inventory=inventory.url, service_token=TOKEN, retry=RETRY, payment_faults=FaultPlan(seed=3)
    ) as system:
        assert system.place_order(make_request("mix", [(102, 1)]), timeout=5) is True
        assert system.payments()["mix"].state == "captured"  # in-process
        assert system.inventory()[102].on_hand == 4  # over HTTP
        assert_consistent(system)


def test_the_client_closes_with_the_system(services):
    inventory, payment = services
    system = remote_system(inventory, payment)
    for _ in range(2):  # a system can be started again
        with system:
            assert system.place_order(make_request(f"r-{_}", [(101, 1)]), timeout=5) is True
            assert any(t.name == "order-system-http" for t in threading.enumerate())
        assert not any(t.name == "order-system-http" and t.is_alive() for t in threading.enumerate())


# --- arguments ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("options", "problems"),
    [
        ({"inventory": "ftp://127.0.0.1:1"}, ["inventory: the scheme must be http or https"]),
        ({"payment": "http://:8080"}, ["payment: the URL has no host"]),
        ({"inventory": "http://127.0.0.1:0"}, ["inventory: the port must be an integer from 1 to 65535"]),
        ({"inventory": "http://127.0.0.1:99999"}, ["the port must be an integer from 1 to 65535"]),
        ({"inventory": "http://u:pw@127.0.0.1:1"}, ["credentials do not belong in the URL"]),
        ({"inventory": "http://127.0.0.1:1/?a=1"}, ["must not have a query"]),
        ({"inventory": 8080}, ["inventory must be a URL such as"]),
        (
            {"inventory": "ftp://:0", "payment": "gopher://x"},
            ["inventory: the scheme", "inventory: the URL has no host", "inventory: the port", "payment:"],
        ),
        ({"inventory": "http://127.0.0.1:1", "stock": {1: 1}}, ["stock cannot go with an inventory URL"]),
        (
            {"inventory": "http://127.0.0.1:1", "inventory_faults": FaultPlan()},
            ["inventory_faults cannot go with a inventory URL"],
        ),
        (
            {"payment": "http://127.0.0.1:1", "payment_faults": FaultPlan()},
            ["payment_faults cannot go with a payment URL"],
        ),
        ({"payment": "http://127.0.0.1:1", "service_token": "has space"}, ["service_token must be"]),
        ({"service_token": TOKEN}, ["service_token is only used with an inventory or payment URL"]),
    ],
)
def test_bad_service_arguments_are_named(options, problems, monkeypatch):
    monkeypatch.setenv("SAGA_ACTORS_TOKEN", TOKEN)
    with pytest.raises(ValueError, match="invalid OrderSystem arguments") as raised:
        OrderSystem(**options)
    for problem in problems:
        assert problem in str(raised.value)
    assert TOKEN not in str(raised.value) and "pw" not in str(raised.value)


def test_a_url_without_a_token_is_refused(monkeypatch):
    monkeypatch.delenv("SAGA_ACTORS_TOKEN", raising=False)
    with pytest.raises(ValueError, match=r"service_token is required.*SAGA_ACTORS_TOKEN"):
        OrderSystem(inventory=f"http://127.0.0.1:{free_port()}")


def test_without_aiohttp_urls_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # `import aiohttp` fails
    with pytest.raises(ImportError, match=r"aiohttp.*pip install 'saga-actors\[http\]'"):
        OrderSystem(inventory="http://127.0.0.1:1", service_token=TOKEN)
    with OrderSystem(stock={101: 1}) as system:  # the embedded default needs no server and no aiohttp
        assert system.place_order(make_request("e", [(101, 1)]), timeout=5) is True


def test_the_embedded_default_does_not_import_aiohttp():
    code = (
        "import sys; from saga_actors import OrderSystem\n"
        "with OrderSystem(stock={1: 1}) as s: pass\n"
        "print('aiohttp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_the_stdlib_services_imports_nothing_of_ours():
    code = (
        "import sys, tests.helpers.stdlib_services\n"
        "print(sorted(m for m in sys.modules if m.startswith('saga_actors')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_the_stdlib_service_refuses_bad_requests():
    """The user-written service follows the documented status codes for what is refused before
    any effect (the engine's own requests never get these)."""
    import json
    import urllib.request

    with StdlibService(Inventory({1: 1}), TOKEN) as service:

        def post(body: bytes, token: str = TOKEN) -> int:
            request = urllib.request.Request(
                service.url + "/inventory/reserve",
                data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return int(response.status)
            except urllib.error.HTTPError as error:
                return int(error.code)

        good = json.dumps({"order_id": "o", "items": [{"product_id": 1, "quantity": 1}]}).encode()
        assert post(good, token="wrong") == 401
        assert post(b"{not json") == 400
        assert post(b"x" * (65 * 1024)) == 413
        assert service.state.effects == 0
        assert post(good) == 200
    with StdlibService(Payment(), TOKEN):
        pass


def test_a_url_that_answers_200_to_everything_never_confirms_an_order(services):
    """A catch-all page (a proxy, another application) is not the protocol: its 200 is no success."""
    import http.server

    class CatchAll(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"hi"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CatchAll)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    inventory, _ = services
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with OrderSystem(
            stock=None, inventory=inventory.url, payment=url, service_token=TOKEN, retry=RETRY
        ) as system:
            future = system.submit(make_request("catch-all", [(101, 1)]))
            try:
                confirmed = future.get(timeout=3)
            except TimeoutError:
                confirmed = None  # still compensating against a service that never answers
            assert confirmed is not True
            with pytest.raises(RemoteServiceError, match=r"not JSON|not the protocol"):
                system.payments()
        assert inventory.state.reservations.get("catch-all", {}).get("state") != "committed"
    finally:
        server.shutdown()
        server.server_close()
