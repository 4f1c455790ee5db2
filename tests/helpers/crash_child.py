"""A child process for the crash tests: places orders on a journal until killed.

    python -m tests.helpers.crash_child JOURNAL ORDERS SEED

Prints "READY", then one line "OUTCOME <order_id> <1|0>" per outcome the
moment `place_order` returns it (flushed), so the parent knows exactly which
outcomes were reported before it kills the process with SIGKILL.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from saga_actors.actors import FaultPlan, OrderSystem, RetryPolicy
from tests.conftest import APPROVED, DECLINED

STOCK = {1: 60, 2: 60, 3: 60, 4: 60}


def request(i: int) -> dict:
    return {
        "user_id": 1 + i % 50,
        "order_id": f"o{i:04d}",
        "items": [
            {"product_id": 1 + i % 4, "quantity": 1 + i % 3},
            {"product_id": 1 + (i + 1) % 4, "quantity": 1},
        ],
        "payment_info": {
            "card_number": DECLINED if i % 13 == 0 else APPROVED,
            "expiry": "12/30",
            "amount": f"{5 + i % 17}.{i % 100:02d}",
        },
    }


def main() -> None:
    path, orders, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    system = OrderSystem(
        journal_path=path,
        stock=STOCK,
        inventory_faults=FaultPlan(failure_rate=0.2, max_latency=0.004, seed=seed),
        payment_faults=FaultPlan(failure_rate=0.2, max_latency=0.004, seed=seed + 1),
        retry=RetryPolicy(initial_interval=0.002, maximum_interval=0.02, maximum_attempts=4),
        snapshot_every=50,
    )
    system.start()
    lock = threading.Lock()
    print("READY", flush=True)

    def place(i: int) -> None:
        outcome = system.place_order(request(i), timeout=60)
        with lock:
            print(f"OUTCOME o{i:04d} {int(outcome)}", flush=True)

    with ThreadPoolExecutor(48) as pool:
        list(pool.map(place, range(orders)))
    system.wait_idle(60)
    print("DONE", flush=True)
    system.stop()


if __name__ == "__main__":
    main()
