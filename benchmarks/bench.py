"""Where the time goes: the order engine against the limits of the machine.

    python benchmarks/bench.py                 # the full run (a few minutes), table + JSON
    python benchmarks/bench.py --quick         # tiny numbers: a smoke run
    python benchmarks/bench.py --only throughput,critical_path --json out.json

Standard library only; the order engine through its public API (plus, for
"group commit off", the journal's own switch). Measurements, not tests:
machines are noisy, so run it twice before believing a difference.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.metadata
import json
import os
import platform
import random
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pykka

import saga_actors.actors.system as system_module
from saga_actors.actors import FaultPlan, OrderSystem
from saga_actors.actors.codec import order_codec
from saga_actors.actors.inventory import InventoryActor, ProductsStocked, StockReleased, StockReserved
from saga_actors.actors.validation import OrderItem
from saga_actors.persistence import SQLiteJournal

CARD = "4242424242424242"


def request(order_id: str, product: int = 1) -> dict[str, Any]:
    return {
        "user_id": 1,
        "order_id": order_id,
        "items": [{"product_id": product, "quantity": 1}],
        "payment_info": {"card_number": CARD, "expiry": "12/30", "amount": "9.99"},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_clients(system: OrderSystem, clients: int, orders: int, prefix: str) -> dict[str, float]:
    """`clients` threads each placing orders one after another; orders/s and latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(orders))
    errors = 0

    def client() -> None:
        nonlocal errors
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            started = time.perf_counter()
            try:
                ok = system.place_order(request(f"{prefix}-{i}", 1 + i % 16), timeout=60)
            except Exception:
                ok = False
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                errors += not ok

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "orders": orders,
        "seconds": elapsed,
        "orders_per_s": orders / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "failed": errors,
    }


def durable_system(folder: str, name: str, **kwargs: Any) -> OrderSystem:
    return OrderSystem(
        journal_path=os.path.join(folder, f"{name}.db"), stock=dict.fromkeys(range(1, 17), 10**9), **kwargs
    )


# --- 1. throughput and latency ---


def bench_throughput(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    results = {}
    for clients in args.clients:
        orders = max(args.orders, clients * 4)
        with durable_system(folder, f"tp{clients}") as system:
            run_clients(system, min(clients, 8), min(200, orders), "warm")
            results[str(clients)] = run_clients(system, clients, orders, "o")
            journal = system._journal
            results[str(clients)]["appends_per_order"] = journal.operations / (orders + min(200, orders))
            results[str(clients)]["commits_per_order"] = journal.transactions / (orders + min(200, orders))
        print(
            f"  {clients:>4} clients: {results[str(clients)]['orders_per_s']:8.0f} orders/s, "
            f"p50 {results[str(clients)]['p50_ms']:6.2f} ms, p99 {results[str(clients)]['p99_ms']:7.2f} ms",
            flush=True,
        )
    return results


# --- 2. the machine's own limits ---


class _Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def bench_limits(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    echo = _Echo.start()
    n = args.asks
    started = time.perf_counter()
    for i in range(n):
        echo.ask(i)
    ask_seconds = (time.perf_counter() - started) / n
    echo.stop()

    path = os.path.join(folder, "fsync.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (x)")
    n = args.commits
    started = time.perf_counter()
    for i in range(n):
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?)", (i,))
        db.execute("COMMIT")
    commit_seconds = (time.perf_counter() - started) / n
    db.close()

    # What one order costs: count the actor messages and journal work of a batch of orders.
    sent = [0]
    original = pykka.ActorRef.tell

    def counting_tell(self: Any, message: Any) -> None:
        sent[0] += 1
        original(self, message)

    with durable_system(folder, "count") as system:
        pykka.ActorRef.tell = counting_tell  # type: ignore[method-assign]
        try:
            before = system._journal.operations, system._journal.transactions
            count = 300
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: system.place_order(request(f"c{i}"), timeout=60), range(count)))
            journal = system._journal
            appends = (journal.operations - before[0]) / count
            commits = (journal.transactions - before[1]) / count
        finally:
            pykka.ActorRef.tell = original  # type: ignore[method-assign]
    messages = sent[0] / count
    result = {
        "pykka_ask_round_trip_us": ask_seconds * 1e6,
        "asks_per_s": 1 / ask_seconds,
        "sqlite_commit_fsync_us": commit_seconds * 1e6,
        "commits_per_s": 1 / commit_seconds,
        "messages_per_order": messages,
        "appends_per_order": appends,
        "commits_per_order_16_clients": commits,
        "orders_per_s_bound_by_messages": (1 / ask_seconds) / (messages / 2),
        "orders_per_s_bound_by_unbatched_fsync": (1 / commit_seconds) / appends,
    }
    print(
        f"  pykka ask round trip {result['pykka_ask_round_trip_us']:.1f} us "
        f"({result['asks_per_s']:.0f}/s); SQLite commit+fsync {result['sqlite_commit_fsync_us']:.1f} us "
        f"({result['commits_per_s']:.0f}/s)",
        flush=True,
    )
    print(
        f"  one order = {messages:.1f} actor messages, {appends:.1f} journal appends "
        f"({commits:.2f} commits with group commit at 16 clients)",
        flush=True,
    )
    return result


# --- 3. critical path ---


def bench_critical_path(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    latency = args.latency
    plan = FaultPlan(min_latency=latency, max_latency=latency, seed=1)
    with durable_system(folder, "critical", inventory_faults=plan, payment_faults=plan) as system:
        run = run_clients(system, 1, args.critical_orders, "cp")
    p50 = run["p50_ms"] / 1000
    result = {"L_ms": latency * 1000, "p50_ms": run["p50_ms"], "p50_in_L": p50 / latency}
    print(
        f"  L = {latency * 1000:.0f} ms: p50 {run['p50_ms']:.1f} ms = {p50 / latency:.2f} L "
        f"(two calls on the critical path: 2 L is the floor)",
        flush=True,
    )
    return result


# --- 4. group commit ---


def bench_group_commit(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    results = {}
    original = system_module.SQLiteJournal
    for label, group in (("on", True), ("off", False)):
        system_module.SQLiteJournal = functools.partial(SQLiteJournal, group_commit=group)  # type: ignore[misc]
        try:
            with durable_system(folder, f"gc-{label}") as system:
                results[label] = run_clients(system, 64, args.orders, "g")
        finally:
            system_module.SQLiteJournal = original  # type: ignore[misc]
    ratio = results["on"]["orders_per_s"] / results["off"]["orders_per_s"]
    print(
        f"  64 clients: group commit on {results['on']['orders_per_s']:.0f} orders/s, "
        f"off {results['off']['orders_per_s']:.0f} orders/s: {ratio:.1f}x",
        flush=True,
    )
    # The journal alone, where fsync is the only bound: 64 writers appending at once.
    journal_rates = {}
    for label, group in (("on", True), ("off", False)):
        journal = SQLiteJournal(os.path.join(folder, f"gcj-{label}.db"), order_codec(), group_commit=group)
        per_writer = max(20, args.orders // 40)
        event = StockReleased("x")

        def write(
            writer: int,
            journal: SQLiteJournal = journal,
            per_writer: int = per_writer,
            event: StockReleased = event,
        ) -> None:
            for n in range(per_writer):
                journal.append(f"w{writer}", [event], n)

        started = time.perf_counter()
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(write, range(64)))
        journal_rates[label] = 64 * per_writer / (time.perf_counter() - started)
        journal.close()
    journal_ratio = journal_rates["on"] / journal_rates["off"]
    print(
        f"  journal alone, 64 writers: on {journal_rates['on']:.0f} appends/s, "
        f"off {journal_rates['off']:.0f} appends/s: {journal_ratio:.1f}x",
        flush=True,
    )
    return {
        "on": results["on"],
        "off": results["off"],
        "ratio": ratio,
        "journal_appends_per_s": journal_rates,
        "journal_ratio": journal_ratio,
    }


# --- 5. recovery time ---


def write_inventory_history(path: str, events: int, snapshot_every: int | None) -> None:
    """An inventory journal of `events` events (reserve, release, ...), optionally with snapshots."""
    journal = SQLiteJournal(path, order_codec(), synchronous="OFF")
    from saga_actors.actors.inventory import InventoryState, evolve

    state = evolve(InventoryState(), ProductsStocked(((1, 10**9),)))
    journal.append("inventory", [ProductsStocked(((1, 10**9),))], 0)
    sequence_nr, batch = 1, []
    items = (OrderItem(1, 1),)
    for i in range(events - 1):
        event = StockReserved(f"o{i // 2}", items) if i % 2 == 0 else StockReleased(f"o{i // 2}")
        batch.append(event)
        state = evolve(state, event)
        if len(batch) == 5000 or i == events - 2:
            sequence_nr = journal.append("inventory", batch, sequence_nr)
            batch = []
        if snapshot_every and (i + 2) % snapshot_every == 0 and not batch:
            journal.save_snapshot("inventory", sequence_nr, state)
    if snapshot_every:
        journal.save_snapshot("inventory", sequence_nr, state)
    journal.close()


def bench_recovery(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for events in args.recovery_events:
        for label, every in (("no_snapshots", None), ("snapshots", 1000)):
            path = os.path.join(folder, f"recovery-{events}-{label}.db")
            write_inventory_history(path, events, 5000 if every else None)
            journal = SQLiteJournal(path, order_codec())
            gc.collect()
            started = time.perf_counter()
            ref = InventoryActor.start_recovered(journal, snapshot_every=every, timeout=3600)
            took = time.perf_counter() - started
            ref.stop()
            journal.close()
            results[f"{events}/{label}"] = {"events": events, "snapshots": every is not None, "seconds": took}
            print(f"  {events:>8} events, {label:<12}: recovery {took * 1000:8.1f} ms", flush=True)
    return results


# --- 6. scale ---


def bench_scale(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    count = args.scale_orders
    plan = FaultPlan(min_latency=0.8, max_latency=1.2, seed=1)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The default RetryPolicy (2 s attempt timeout): a slow wire and the engine's own
    # queueing make attempts time out, and no order may roll back for it.
    with durable_system(folder, "scale", inventory_faults=plan, payment_faults=plan) as system:
        started = time.perf_counter()
        futures = [system.submit(request(f"s{i}", 1 + i % 16)) for i in range(count)]
        submitted = time.perf_counter() - started
        peak_in_flight = system.metrics()["in_flight"]
        errors = 0
        confirmed = 0
        for future in futures:
            try:
                confirmed += future.get(600)
            except Exception:
                errors += 1
        wall = time.perf_counter() - started
        checks_ok = all(c.ok for c in system.check_consistency())
        rolled_back = sum(1 for v in system.orders().values() if v.state == "cancelled")
        retries = system.metrics()["retries"]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = {
        "orders": count,
        "wall_seconds": wall,
        "submit_seconds": submitted,
        "in_flight_after_submit": peak_in_flight,
        "confirmed": confirmed,
        "rolled_back": rolled_back,
        "retries": retries,
        "errors": errors,
        "peak_rss_mib": rss / 1024,
        "rss_before_mib": rss_before / 1024,
        "checks_ok": checks_ok,
    }
    print(
        f"  {count} orders in flight (latency ~1 s): wall {wall:.1f} s, peak RSS {rss / 1024:.0f} MiB, "
        f"confirmed {confirmed}, rolled back {rolled_back}, retries {retries}, errors {errors}, "
        f"checks {'pass' if checks_ok else 'FAIL'}",
        flush=True,
    )
    return result


SECTIONS: dict[str, Callable[[argparse.Namespace, str], dict[str, Any]]] = {
    "throughput": bench_throughput,
    "limits": bench_limits,
    "critical_path": bench_critical_path,
    "group_commit": bench_group_commit,
    "recovery": bench_recovery,
    "scale": bench_scale,
}


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pykka": importlib.metadata.version("pykka"),
        "sqlite": sqlite3.sqlite_version,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny numbers (a smoke run)")
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the results (default: benchmarks/results.json for a full run, "
        "nowhere for --quick or --only, so a partial run never replaces the reference results)",
    )
    args = parser.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(SECTIONS)
        if unknown:
            parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    quick = args.quick
    args.clients = [1, 8] if quick else [1, 8, 64, 256]
    args.orders = 100 if quick else 4000
    args.asks = 2000 if quick else 20000
    args.commits = 200 if quick else 2000
    args.latency = 0.02
    args.critical_orders = 5 if quick else 40
    args.recovery_events = [2000] if quick else [10_000, 100_000, 1_000_000]
    args.scale_orders = 200 if quick else 10_000
    sections = args.only.split(",") if args.only else list(SECTIONS)
    if quick and not args.only:
        sections = [s for s in sections if s != "scale"] + ["scale"]
    results: dict[str, Any] = {"machine": machine(), "quick": quick}
    print(f"machine: {results['machine']}")
    with tempfile.TemporaryDirectory(prefix="saga-bench-") as folder:
        for name in sections:
            print(f"{name}:", flush=True)
            results[name] = SECTIONS[name](args, folder)
    target = args.json or (None if (quick or args.only) else "benchmarks/results.json")
    if target is not None:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {target}")
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
