"""Order nodes of a cluster: three `OrderSystem(node_id=...)`s over shared service processes.

The journal here is the in-memory lease store (the nodes share it in this
process); on PostgreSQL, with the nodes as processes, see
test_cluster_processes.py. Each order is placed once cluster-wide, every
caller gets its one outcome, a reused order id with other content is an
`IdempotencyConflict` on the node that sees it second, and every
consistency check passes across the services afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from saga_actors import IdempotencyConflict, OrderSystem, RetryPolicy
from saga_actors.persistence.lease import InMemoryLeaseJournal
from tests.conftest import APPROVED, DECLINED, assert_consistent, make_request
from tests.helpers.services import TOKEN, ServiceProcess

pytest.importorskip("aiohttp")

RETRY = RetryPolicy(initial_interval=0.01, maximum_interval=0.05, maximum_attempts=10, attempt_timeout=1.0)
ANSWER = 30.0


@contextlib.contextmanager
def cluster(tmp_path: Path, initial: dict[int, int], nodes: int = 3) -> Iterator[list[OrderSystem]]:
    stocked = ",".join(f"{product}={units}" for product, units in initial.items())
    inventory = ServiceProcess("inventory", tmp_path / "inventory.db", "--stock", stocked, "--seed", "1")
    payment = ServiceProcess("payment", tmp_path / "payment.db", "--seed", "2")
    store = InMemoryLeaseJournal()
    with inventory, payment:
        systems = [
            OrderSystem(
                journal=store,
                node_id=f"n{i}",
                lease=2.0,
                inventory=inventory.url,
                payment=payment.url,
                service_token=TOKEN,
                retry=RETRY,
            )
            for i in range(1, nodes + 1)
        ]
        with contextlib.ExitStack() as stack:
            for system in systems:
                stack.enter_context(system)
            yield systems


def test_a_node_needs_shared_services_and_a_shared_journal(tmp_path):
    with pytest.raises(ValueError, match="give inventory and payment as URLs"):
        OrderSystem(journal=InMemoryLeaseJournal(), node_id="n1")
    with pytest.raises(ValueError, match=r"give inventory and payment as URLs.*needs a PostgreSQL journal"):
        OrderSystem(node_id="n1")  # both problems named at once
    with pytest.raises(ValueError, match="needs a PostgreSQL journal"):
        OrderSystem(
            journal=tmp_path / "o.db",
            node_id="n1",
            inventory="http://127.0.0.1:1",
            payment="http://127.0.0.1:2",
            service_token="t" * 32,
        )


def test_orders_sent_to_every_node_are_placed_once_and_every_caller_gets_the_same_outcome(tmp_path):
    initial = {101: 40, 102: 5}  # 102 is scarce: most orders for it are refused
    with cluster(tmp_path, initial) as nodes:
        requests = []
        for i in range(60):
            card = DECLINED if i % 7 == 0 else APPROVED
            product = 102 if i % 3 == 0 else 101
            requests.append(make_request(f"c{i}", [(product, 1)], card=card))
        with ThreadPoolExecutor(24) as pool:
            # Every order goes to two different nodes at once (a client's retry via another node).
            futures = [
                (r["order_id"], pool.submit(nodes[k % 3].place_order, r, timeout=ANSWER))
                for i, r in enumerate(requests)
                for k in (i, i + 1)
            ]
            outcomes: dict[str, set[bool]] = {}
            for order_id, future in futures:
                outcomes.setdefault(order_id, set()).add(future.result())
        assert all(len(seen) == 1 for seen in outcomes.values())  # one outcome per order
        confirmed = {order_id for order_id, seen in outcomes.items() if True in seen}
        assert not any(f"c{i}" in confirmed for i in range(0, 60, 7))  # declined cards
        assert 0 < len({f"c{i}" for i in range(0, 60, 3)} & confirmed) <= 5  # never oversold
        for node in nodes:
            assert node.wait_idle(ANSWER)
        assert_consistent(nodes[0], initial)  # any node checks the whole cluster
        # Any node answers for any order, from the journal.
        assert nodes[2].order("c1").state == ("confirmed" if "c1" in confirmed else "cancelled")
        assert nodes[1].order("never") is None
        with pytest.raises(IdempotencyConflict):
            nodes[2].place_order(make_request("c1", [(101, 2)]), timeout=ANSWER)
        assert nodes[0].place_order(requests[1], timeout=ANSWER) == ("c1" in confirmed)
