"""A concurrency simulation of the order engine: many customers, unreliable services.

    python demo.py            # 300 orders, 32 at a time, 10% transient failures

Prints what happened and the consistency checks; exits non-zero if one fails.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from actors import FaultPlan, OrderSystem, RetryPolicy

DECLINED_CARD = "4000000000000002"
GOOD_CARD = "4242424242424242"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--failure-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    stock = {product: rng.randint(20, 60) for product in range(1, 9)}
    faults = dict(failure_rate=args.failure_rate, min_latency=0.001, max_latency=0.01)
    requests = []
    for i in range(args.orders):
        product = rng.choice(list(stock))
        quantity = rng.randint(1, 4)
        requests.append({
            "user_id": rng.randint(1, 1000),
            "order_id": f"order-{i:05d}",
            "items": [{"product_id": product, "quantity": quantity}],
            "payment_info": {
                "card_number": DECLINED_CARD if rng.random() < 0.05 else GOOD_CARD,
                "expiry": "12/30",
                "amount": f"{quantity * 9.99:.2f}",
            },
        })

    system = OrderSystem(
        stock=stock,
        inventory_faults=FaultPlan(**faults, seed=args.seed),
        payment_faults=FaultPlan(**faults, seed=args.seed + 1),
        retry=RetryPolicy(initial_interval=0.01, maximum_interval=0.2),
    )
    with system:
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            outcomes = list(pool.map(lambda r: system.place_order(r, timeout=60), requests))
        elapsed = time.perf_counter() - started
        system.wait_idle(30)
        metrics = system.metrics()
        checks = system.check_consistency()
        inventory = system.inventory()

    print(f"{len(outcomes)} orders in {elapsed:.2f} s ({len(outcomes) / elapsed:.0f} orders/s)")
    print(f"  confirmed {sum(outcomes)}, cancelled {len(outcomes) - sum(outcomes)}")
    print(f"  retries {metrics['retries']}, compensations {metrics['compensations']}")
    print("stock (before -> on hand, reserved):")
    for product, view in inventory.items():
        print(f"  product {product}: {stock[product]:3d} -> {view.on_hand:3d}, {view.reserved}")
    print("checks:")
    for check in checks:
        print(f"  [{'PASS' if check.ok else 'FAIL'}] {check.name}" + (f": {check.detail}" if check.detail else ""))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
