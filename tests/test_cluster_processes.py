"""The cluster test: PostgreSQL, the two service processes and three order nodes as processes.

About 1,000 orders go to the nodes over HTTP, as through a load balancer
that tries another node when one does not answer: duplicates are sent to
two nodes at once, stock is scarce, some cards are declined, and the
services refuse 5 % of requests (transient). One node is SIGKILLed at about
30 % of the run; another is SIGSTOPped for longer than its lease, then
SIGCONTed. Afterwards, across the processes: every order is confirmed or
cancelled; each effect was applied once per order (the services' own
journals); stock and money are conserved and nothing is left reserved or
authorized (`check_consistency`); every outcome a caller was told is the
order's final state; the paused node wrote nothing once fenced off; the
dead node's sagas were taken over within a lease and one renewal period.
A second test restarts PostgreSQL mid-run (`pg_ctl restart -m immediate`).

Every wait is bounded and waits on a condition; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from saga_actors import OrderSystem
from saga_actors.actors.codec import order_codec
from saga_actors.actors.processes import NodeProcess
from saga_actors.persistence.sqlite import SQLiteJournal
from tests.conftest import APPROVED, DECLINED, NO_FUNDS, assert_consistent, make_request, needs_postgres
from tests.helpers.services import TOKEN, ServiceProcess

pytestmark = needs_postgres
pytest.importorskip("aiohttp")
pytest.importorskip("psycopg")

LEASE = 2.0  # seconds
RENEW_EVERY = LEASE / 3  # the nodes' default
PRODUCTS = range(1, 11)
STOCK = 110  # units per product: about 2,000 asked for 1,100 in stock
HTTP_TIMEOUT = 4.0  # seconds a client waits for one node before it tries the next
SETTLE = 90.0  # seconds the cluster may take to finish everything


class Client:
    """Places orders over HTTP like a load balancer: on no answer (a dead, paused or restarting
    node, a 503 or a 504) it tries the next node, with the same request. Records every
    answer it got: (order id, confirmed)."""

    def __init__(self, nodes: list[NodeProcess]) -> None:
        self.nodes = nodes
        self.lock = threading.Lock()
        self.answers: list[tuple[str, bool]] = []
        self.conflicts: list[str] = []
        self.retries = 0
        self.aborted = threading.Event()  # the test failed: every client gives up

    def place(self, request: dict[str, Any], first: int) -> None:
        body = json.dumps(request).encode()
        deadline = time.monotonic() + SETTLE
        attempt = 0
        while time.monotonic() < deadline and not self.aborted.is_set():
            node = self.nodes[(first + attempt) % len(self.nodes)]
            attempt += 1
            try:
                status, answer = post(node.url + "/orders?timeout=3", body)
            except (OSError, urllib.error.URLError):
                status, answer = 0, {}
            if status == 200:
                with self.lock:
                    self.answers.append((answer["order_id"], answer["confirmed"]))
                return
            if status == 409:
                with self.lock:
                    self.conflicts.append(request["order_id"])
                return
            with self.lock:
                self.retries += 1
            self.aborted.wait(0.05 * min(attempt, 10))  # a client's backoff, not a sync
        if self.aborted.is_set():
            return
        raise AssertionError(f"order {request['order_id']} got no answer in {SETTLE} s")

    def answered(self) -> int:
        with self.lock:
            return len(self.answers)


def post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def get(url: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


class LeaseWatch:
    """Reads the nodes' leases from the database every 20 ms (its own thread): when each node's
    epoch changed, by this process's clock and by the database's."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        self.lock = threading.Lock()
        self.history: dict[str, list[tuple[int, float, Any]]] = {}  # node -> (epoch, monotonic, db time)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        import psycopg

        while not self.stopping.wait(0.02):
            try:
                rows = self.conn.execute(
                    "SELECT node_id, epoch, clock_timestamp() FROM saga_actors_nodes"
                ).fetchall()
            except Exception:  # the server restarts: read again once it is back
                with contextlib.suppress(Exception):
                    self.conn.close()
                with contextlib.suppress(Exception):
                    self.conn = psycopg.connect(self.url, autocommit=True)
                continue
            seen = time.monotonic()
            with self.lock:
                for node_id, epoch, now in rows:
                    history = self.history.setdefault(node_id, [])
                    if not history or history[-1][0] != epoch:
                        history.append((epoch, seen, now))

    def epoch(self, node_id: str) -> int | None:
        with self.lock:
            history = self.history.get(node_id)
            return history[-1][0] if history else None

    def changed_since(self, node_id: str, epoch: int) -> tuple[float, Any] | None:
        """When the node's epoch first moved on from `epoch` (monotonic, database time), or None."""
        with self.lock:
            history = self.history.get(node_id, [])
            epochs = [e for e, _, _ in history]
            if epoch not in epochs or epochs.index(epoch) == len(history) - 1:
                return None
            _, seen, now = history[epochs.index(epoch) + 1]
            return seen, now

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.conn.close()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        threading.Event().wait(0.02)
    return result


@contextlib.contextmanager
def aborting(client: Client, paused: NodeProcess | None = None) -> Iterator[None]:
    """If the block fails, the clients give up at once and a paused node goes on (so that the
    test ends instead of waiting for every client's deadline)."""
    try:
        yield
    except BaseException:
        client.aborted.set()
        if paused is not None:
            with contextlib.suppress(Exception):
                paused.signal(signal.SIGCONT)
        raise


def orders(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        roll = rng.random()
        card = DECLINED if roll < 0.08 else NO_FUNDS if roll < 0.12 else APPROVED
        product, units = rng.choice(PRODUCTS), rng.randint(1, 3)
        requests.append(make_request(f"o{i}", [(product, units)], card=card, amount=f"{9.99 * units:.2f}"))
    return requests


@contextlib.contextmanager
def cluster(tmp_path: Path, url: str) -> Iterator[tuple[list[NodeProcess], ServiceProcess, ServiceProcess]]:
    stocked = ",".join(f"{p}={STOCK}" for p in PRODUCTS)
    inventory = ServiceProcess(
        "inventory", tmp_path / "inventory.db", "--stock", stocked, "--failure-rate", "0.05", "--seed", "1"
    )
    payment = ServiceProcess("payment", tmp_path / "payment.db", "--failure-rate", "0.05", "--seed", "2")
    with inventory, payment:
        nodes = [
            NodeProcess(
                url,
                "--node-id",
                f"n{i}",
                "--lease",
                str(LEASE),
                "--inventory",
                inventory.url,
                "--payment",
                payment.url,
                token=TOKEN,
            )
            for i in (1, 2, 3)
        ]
        with contextlib.ExitStack() as stack:
            for node in nodes:
                stack.enter_context(node)
            yield nodes, inventory, payment


def settle_and_check(
    url: str, tmp_path: Path, client: Client, requests: list[dict[str, Any]], live: NodeProcess, services: Any
) -> dict[str, str]:
    """Wait until every order is confirmed or cancelled; check every invariant; return the states."""
    ids = [r["order_id"] for r in requests]

    def final_states() -> dict[str, str] | None:
        states = {}
        for order_id in ids:
            status, view = get(f"{live.url}/orders/{order_id}")
            if status != 200 or view["state"] not in ("confirmed", "cancelled"):
                return None
            states[order_id] = view["state"]
        return states

    states: dict[str, str] = wait_for(final_states, SETTLE, "every order confirmed or cancelled")
    # Every outcome a caller was told is the order's final state, and no order conflicted.
    assert not client.conflicts
    told: dict[str, set[bool]] = {}
    for order_id, confirmed in client.answers:
        told.setdefault(order_id, set()).add(confirmed)
    assert set(told) == set(ids)
    for order_id, seen in told.items():
        assert seen == {states[order_id] == "confirmed"}, (order_id, seen, states[order_id])
    # Stock and money conserved, nothing reserved or authorized, each confirmed order captured
    # exactly its amount: checked by one more node, across the processes.
    inventory, payment = services
    checker = OrderSystem(
        journal=url,
        node_id="checker",
        lease=LEASE,
        inventory=inventory.url,
        payment=payment.url,
        service_token=TOKEN,
    )
    with checker:
        assert checker.wait_idle(SETTLE)
        assert_consistent(checker, dict.fromkeys(PRODUCTS, STOCK))
    # Each effect applied once per order: the services' own journals.
    inventory.stop()
    payment.stop()
    journal = SQLiteJournal(tmp_path / "inventory.db", order_codec())
    effects = Counter(
        (type(s.event).__name__, getattr(s.event, "order_id", None))
        for pid in ("inventory",)
        for s in journal.replay(pid)
    )
    journal.close()
    journal = SQLiteJournal(tmp_path / "payment.db", order_codec())
    effects.update(
        (type(s.event).__name__, getattr(s.event, "order_id", None)) for s in journal.replay("payment")
    )
    journal.close()
    once = ("StockReserved", "StockCommitted", "StockReleased", "PaymentAuthorized", "PaymentCaptured")
    twice = {key: n for key, n in effects.items() if key[0] in once and n > 1}
    assert not twice, twice
    confirmed = {i for i, s in states.items() if s == "confirmed"}
    assert {o for (kind, o) in effects if kind == "PaymentCaptured"} == confirmed
    assert {o for (kind, o) in effects if kind == "StockCommitted"} == confirmed
    return states


def test_three_nodes_a_sigkill_and_a_sigstop(tmp_path: Path, postgres_url: str) -> None:
    requests = orders(1000, seed=7)
    duplicated = set(range(0, len(requests), 6))  # every sixth order is sent to two nodes at once
    with cluster(tmp_path, postgres_url) as (nodes, inventory, payment):
        n1, n2, n3 = nodes
        watch = LeaseWatch(postgres_url)
        client = Client(nodes)
        try:
            with ThreadPoolExecutor(32) as pool, aborting(client, n2):
                jobs = []
                for i, request in enumerate(requests):
                    jobs.append(pool.submit(client.place, request, i % 3))
                    if i in duplicated:
                        jobs.append(pool.submit(client.place, request, (i + 1) % 3))
                wait_for(lambda: client.answered() >= 300, SETTLE, "30 % of the orders answered")
                epoch_n1 = wait_for(lambda: watch.epoch("n1"), 5, "n1's lease")
                killed = time.monotonic()
                n1.kill()  # SIGKILL
                wait_for(lambda: client.answered() >= 550, SETTLE, "55 % of the orders answered")
                epoch_n2 = watch.epoch("n2")
                assert epoch_n2 is not None
                n2.signal(signal.SIGSTOP)
                fenced = wait_for(
                    lambda: watch.changed_since("n2", epoch_n2), 4 * LEASE + 5, "n2 fenced off while paused"
                )
                n2.signal(signal.SIGCONT)
                for job in jobs:
                    job.result()
            taken = watch.changed_since("n1", epoch_n1)
            assert taken is not None, "n1's sagas were never taken over"
            assert taken[0] - killed <= LEASE + RENEW_EVERY + 0.5, taken[0] - killed  # + polling, wakeups
            settle_and_check(postgres_url, tmp_path, client, requests, n3, (inventory, payment))
            # The paused node wrote nothing once fenced off: every event of epoch_n2 was written
            # before the take-over that fenced it committed.
            import psycopg

            with psycopg.connect(postgres_url) as conn:
                late = conn.execute(
                    "SELECT count(*) FROM saga_actors_events "
                    "WHERE writer_node = 'n2' AND writer_epoch = %s AND written_at > %s",
                    (epoch_n2, fenced[1]),
                ).fetchone()
                written = conn.execute(
                    "SELECT count(*) FROM saga_actors_events WHERE writer_node = 'n2' AND writer_epoch = %s",
                    (epoch_n2,),
                ).fetchone()
            assert late == (0,)
            assert written is not None and written[0] > 0  # it did write before the pause
            assert n2.running()  # and it carried on: it rejoined at a new epoch
            assert (watch.epoch("n2") or 0) >= epoch_n2 + 2
        finally:
            watch.close()


def test_postgres_restarted_mid_run(tmp_path: Path, postgres_url: str) -> None:
    pg_ctl, data = os.environ.get("SAGA_ACTORS_TEST_PG_CTL"), os.environ.get("SAGA_ACTORS_TEST_PGDATA")
    if not (pg_ctl and data):
        pytest.skip("needs SAGA_ACTORS_TEST_PG_CTL and SAGA_ACTORS_TEST_PGDATA (bash .ci/postgres start)")
    runas = os.environ.get("SAGA_ACTORS_TEST_PG_RUNAS")
    requests = orders(300, seed=11)
    with cluster(tmp_path, postgres_url) as (nodes, inventory, payment):
        client = Client(nodes)
        with ThreadPoolExecutor(16) as pool, aborting(client):
            jobs = [pool.submit(client.place, r, i % 3) for i, r in enumerate(requests)]
            wait_for(lambda: client.answered() >= 120, SETTLE, "40 % of the orders answered")
            log = os.path.join(os.path.dirname(data), "server.log")  # where .ci/postgres logs
            command = [pg_ctl, "-D", data, "-l", log, "restart", "-m", "immediate", "-w", "-t", "60"]
            if runas:
                command = ["runuser", "-u", runas, "--", *command]
            # The server's output goes to its log: a pipe would be held open by the server.
            subprocess.run(
                command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90
            )
            for job in jobs:
                job.result()
        assert all(node.running() for node in nodes)  # they reconnected; none gave up
        settle_and_check(postgres_url, tmp_path, client, requests, nodes[0], (inventory, payment))
