"""Where the time goes: the order engine against the limits of the machine.

    python benchmarks/bench.py                 # the full run (~10 min on 2 cores), table + JSON
    python benchmarks/bench.py --quick         # small numbers: a smoke run (under a minute)
    python benchmarks/bench.py --only ask_ratio,critical_path --json out.json

Every target is a row printed next to the machine limit it is relative to,
measured in the same run (a bare pykka ask, an fsync, the machine's thread
and memory limits, the engine's own figures early in its history): the
measured value, the target, the limit, PASS or MISS (a measurement with no
target, such as the `services` rows, shows "-"). The rows are printed as
each section measures them and again, together, at the end. Targets are
measurements, never timed unit tests: machines are noisy, so run it twice
before believing a difference.

Standard library only (and, for the `services` section, which runs the
inventory and the payment as `saga-actors serve` processes, the optional
extra `http`: aiohttp); the order engine through its public API, except
where a number can only be read inside it (the journal's commit counters,
the timer's pending entries, the journal's group-commit switch): those
reads are in `engine_internals` and `journal_group_commit`, and nowhere else.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import gc
import importlib.metadata
import inspect
import json
import os
import platform
import random
import resource
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pykka

import saga_actors.sagas.runtime as runtime_module
from saga_actors.actors import FaultPlan, OrderSystem
from saga_actors.actors.codec import order_codec
from saga_actors.actors.inventory import InventoryActor, ProductsStocked, StockReleased, StockReserved
from saga_actors.actors.validation import OrderItem
from saga_actors.persistence import SQLiteJournal
from saga_actors.sagas.policy import RetryPolicy
from saga_actors.supervision.timer import Timer, TimerHandle

CARD = "4242424242424242"
PRODUCTS = 16
GIB = 1024**3
CHILD_MARK = "BENCH-CHILD-RESULT "  # prefixes the in-flight child's one line of JSON on stdout


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
    """`clients` threads each placing orders one after another: orders/s, latency, CPU per order.

    CPU is the whole process's (every thread: clients, actors, journal writer, timer).
    """
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
                ok = system.place_order(request(f"{prefix}-{i}", 1 + i % PRODUCTS), timeout=120)
            except Exception:
                ok = False
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                errors += not ok

    threads = [threading.Thread(target=client, name=f"bench-client-{n}") for n in range(clients)]
    cpu = time.process_time()
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return {
        "orders": orders,
        "seconds": elapsed,
        "orders_per_s": orders / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "failed": errors,
        "cpu_seconds": cpu,
        "cpu_ms_per_order": 1000 * cpu / orders,
    }


def durable_system(folder: str, name: str, **kwargs: Any) -> OrderSystem:
    return OrderSystem(
        journal_path=os.path.join(folder, f"{name}.db"),
        stock=dict.fromkeys(range(1, PRODUCTS + 1), 10**9),
        **kwargs,
    )


def journal_bytes(path: str) -> int:
    """The journal's size on disk: the SQLite file plus its write-ahead log."""
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def journal_used_bytes(path: str) -> int | None:
    """Bytes in use in a closed journal: its pages less its free pages, from the SQLite file's header.

    Deleted rows leave free pages that later writes reuse, so the file's size
    lags what is stored; this does not. None if the file is not a closed
    SQLite database (its log not yet checkpointed into it).
    """
    if os.path.exists(path + "-wal") and os.path.getsize(path + "-wal"):
        return None
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return None
    page_size = int.from_bytes(header[16:18], "big")
    pages, free = int.from_bytes(header[28:32], "big"), int.from_bytes(header[36:40], "big")
    return (pages - free) * (65536 if page_size == 1 else page_size)


def count(n: float) -> str:
    return f"{n:,.0f}"


# --- the engine's internals the bench reads (the only place it reaches inside) ---


@dataclass
class Internals:
    journal: Any  # the SQLiteJournal: `operations` (appends, snapshots, ...) and `transactions` (commits)
    timer: Any  # the supervision Timer: `pending()`


def engine_internals(system: OrderSystem) -> Internals:
    """The journal and the timer of a running OrderSystem (its runtime's), whose counters only
    the bench reads.

    The journal's counters (operations, commits) and the timer's pending
    entries are not part of the public API; this is the one function that
    reaches for them, so a change of the engine's insides breaks the bench
    here only. Either may be None if the engine no longer has it.
    """
    runtime = system.runtime
    return Internals(journal=runtime.journal, timer=runtime.timer)


def journal_counters(system: OrderSystem) -> tuple[int, int]:
    """(operations, commits) the system's journal has written so far; (0, 0) if unreachable."""
    journal = engine_internals(system).journal
    return getattr(journal, "operations", 0), getattr(journal, "transactions", 0)


@contextlib.contextmanager
def journal_group_commit(enabled: bool) -> Iterator[None]:
    """Systems built inside open their SQLite journal with group commit on or off (the journal's switch)."""
    original = runtime_module.SQLiteJournal
    runtime_module.SQLiteJournal = functools.partial(SQLiteJournal, group_commit=enabled)  # type: ignore[misc]
    try:
        yield
    finally:
        runtime_module.SQLiteJournal = original  # type: ignore[misc]


# --- target rows: printed as measured, and together at the end ---

TARGETS: list[dict[str, Any]] = []


def target_row(
    section: str, metric: str, measured: float | None, shown: str, target: str, limit: str, ok: bool | None
) -> None:
    """One row; `ok` None for a measurement with no target (its result is "-")."""
    row = {
        "section": section,
        "metric": metric,
        "measured": measured,
        "shown": shown,
        "target": target,
        "limit": limit,
        "result": "-" if ok is None else "PASS" if ok else "MISS",
    }
    TARGETS.append(row)
    print(f"  [{row['result']}] {metric}: {shown}  (target {target}; limit: {limit})", flush=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = {
        "section": "section",
        "metric": "metric",
        "shown": "measured",
        "target": "target",
        "limit": "machine limit (this run)",
        "result": "result",
    }
    columns = list(header)
    widths = {c: max(len(str(r[c])) for r in [header, *rows]) for c in columns}
    for r in [header, *rows]:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip())


# --- the machine ---


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def thread_limit() -> dict[str, int]:
    """What caps the number of threads: kernel.pid_max and threads-max (machine-wide), RLIMIT_NPROC."""
    limits: dict[str, int] = {}
    for name in ("pid_max", "threads-max"):
        with contextlib.suppress(OSError, ValueError):
            limits[name] = int(Path(f"/proc/sys/kernel/{name}").read_text())
    soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if soft != resource.RLIM_INFINITY:
        limits["ulimit -u"] = soft
    return limits


def memory_total() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def fsync_rate(folder: str, seconds: float) -> dict[str, float]:
    """A loop of 4 KiB write + fsync on a file in `folder` (where the journals live): fsyncs/s.

    The writes go round a 4 MiB file written beforehand, as SQLite's
    write-ahead log is reused after a checkpoint: appending to a growing file
    would also commit its size each time, which the journal's commits mostly
    do not, and measures some 30-40 % slower here. The disk is shared: a run
    beside another busy process measures less, so sections that need the rate
    measure it again where they use it.
    """
    path = os.path.join(folder, "fsync-probe")
    block, size = b"x" * 4096, 4 << 20
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, bytes(size))
        os.fsync(fd)
        n = 0
        started = time.perf_counter()
        while n < 50 or time.perf_counter() - started < seconds:
            os.pwrite(fd, block, (n * len(block)) % size)
            os.fsync(fd)
            n += 1
        took = time.perf_counter() - started
    finally:
        os.close(fd)
        os.unlink(path)
    return {"fsyncs_per_s": n / took, "fsync_us": 1e6 * took / n}


class _Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def bare_asks(n: int) -> dict[str, float]:
    """Round trips to a trivial actor from one thread: asks/s and process CPU per ask."""
    echo = _Echo.start()
    try:
        for i in range(min(n, 500)):  # warm-up
            echo.ask(i)
        cpu = time.process_time()
        started = time.perf_counter()
        for i in range(n):
            echo.ask(i)
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        echo.stop()
    return {"asks_per_s": n / took, "ask_us": 1e6 * took / n, "cpu_us_per_ask": 1e6 * cpu / n}


def machine(folder: str, quick: bool) -> dict[str, Any]:
    threads = thread_limit()
    info = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "pykka": importlib.metadata.version("pykka"),
        "sqlite": sqlite3.sqlite_version,
        "memory_bytes": memory_total(),
        "thread_limits": threads,
        "thread_limit": min(threads.values()) if threads else None,
        "fsync": fsync_rate(folder, 0.3 if quick else 1.5),
    }
    return info


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: {info['cpu']}, {info['cpus']} cores, {info['memory_bytes'] / GIB:.1f} GiB, "
        f"{info['platform']}",
    )
    print(
        f"         {info['implementation']} {info['python']}, pykka {info['pykka']}, SQLite {info['sqlite']}",
    )
    limits = ", ".join(f"{k} {count(v)}" for k, v in info["thread_limits"].items())
    print(
        f"         fsync {count(info['fsync']['fsyncs_per_s'])}/s ({info['fsync']['fsync_us']:.0f} us: "
        f"4 KiB write + fsync in the journals' folder); threads: {limits}",
        flush=True,
    )


# --- throughput and latency ---


def bench_throughput(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    results = {}
    for clients in args.clients:
        orders = max(args.orders, clients * 4)
        warm = min(200, orders)
        with durable_system(folder, f"tp{clients}") as system:
            run_clients(system, min(clients, 8), warm, "warm")
            results[str(clients)] = run_clients(system, clients, orders, "o")
            operations, commits = journal_counters(system)
            results[str(clients)]["appends_per_order"] = operations / (orders + warm)
            results[str(clients)]["commits_per_order"] = commits / (orders + warm)
        print(
            f"  {clients:>4} clients: {results[str(clients)]['orders_per_s']:8.0f} orders/s, "
            f"p50 {results[str(clients)]['p50_ms']:6.2f} ms, p99 {results[str(clients)]['p99_ms']:7.2f} ms, "
            f"CPU {results[str(clients)]['cpu_ms_per_order']:.2f} ms/order",
            flush=True,
        )
    if "64" in results:
        rate = results["64"]["orders_per_s"]
        fsyncs = args.machine["fsync"]["fsyncs_per_s"]
        commits = results["64"]["commits_per_order"]
        target_row(
            "throughput",
            "durable orders/s at 64 clients",
            rate,
            count(rate),
            ">= 2,000",
            f"fsync {count(fsyncs)}/s / {commits:.2f} commits per order = {count(fsyncs / commits)} orders/s"
            if commits
            else f"fsync {count(fsyncs)}/s",
            rate >= 2000,
        )
    return results


# --- the machine's own limits (kept for comparison with earlier results) ---


def bench_limits(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    asks = bare_asks(args.asks)
    ask_seconds = asks["ask_us"] / 1e6

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
    with durable_system(folder, "count") as system:
        before = journal_counters(system)
        batch = 300
        with MessageCounter() as counter, ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: system.place_order(request(f"c{i}"), timeout=60), range(batch)))
        after = journal_counters(system)
    appends = (after[0] - before[0]) / batch
    commits = (after[1] - before[1]) / batch
    messages = counter.tells / batch
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
        f"  one order = {messages:.1f} actor messages (tell), {appends:.1f} journal appends "
        f"({commits:.2f} commits with group commit at 16 clients)",
        flush=True,
    )
    return result


# --- ask_ratio: one order against one bare ask ---


def bench_ask_ratio(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """Durable orders/s at 64 clients against bare asks/s, measured around it in this process."""
    asks_before = bare_asks(args.asks)
    with durable_system(folder, "ratio") as system:
        run_clients(system, 8, 200, "warm")
        run = run_clients(system, 64, args.ratio_orders, "r")
    asks_after = bare_asks(args.asks)
    asks_per_s = (asks_before["asks_per_s"] + asks_after["asks_per_s"]) / 2
    cpu_us_per_ask = (asks_before["cpu_us_per_ask"] + asks_after["cpu_us_per_ask"]) / 2
    rate = run["orders_per_s"]
    cpu_us_per_order = 1000 * run["cpu_ms_per_order"]
    result = {
        "asks_before": asks_before,
        "asks_after": asks_after,
        "asks_per_s": asks_per_s,
        "cpu_us_per_ask": cpu_us_per_ask,
        "run": run,
        "orders_per_s": rate,
        "ratio": rate / asks_per_s,
        "asks_per_order_wall": asks_per_s / rate,
        "cpu_us_per_order": cpu_us_per_order,
        "asks_per_order_cpu": cpu_us_per_order / cpu_us_per_ask,
    }
    print(
        f"  bare ask {count(asks_before['asks_per_s'])}/s before, {count(asks_after['asks_per_s'])}/s after "
        f"({cpu_us_per_ask:.0f} us CPU each); durable orders at 64 clients {count(rate)}/s "
        f"(p50 {run['p50_ms']:.0f} ms, {run['failed']:.0f} failed)",
        flush=True,
    )
    print(
        f"  one order = {result['asks_per_order_wall']:.1f} bare asks of wall time, "
        f"{cpu_us_per_order:.0f} us CPU = {result['asks_per_order_cpu']:.1f} bare asks of CPU; "
        f"orders/s : asks/s = 1 : {1 / result['ratio']:.1f}",
        flush=True,
    )
    target_row(
        "ask_ratio",
        "durable orders/s at 64 clients",
        rate,
        f"{count(rate)} (1/{1 / result['ratio']:.1f} of asks/s)",
        f">= asks/s / 10 = {count(asks_per_s / 10)}",
        f"bare ask {count(asks_per_s)}/s",
        rate >= asks_per_s / 10,
    )
    return result


# --- per_order: what one order costs, counted ---


class MessageCounter:
    """Counts, while active, what the library does in this process (the bench's own threads aside):
    pykka `ActorRef.tell` and `ask` calls (by message type), threads started, timer entries
    scheduled and cancelled. Patches classes in this process only, and restores them on exit."""

    def __init__(self) -> None:
        self.tells = 0
        self.asks = 0
        self.threads = 0
        self.scheduled = 0
        self.cancelled = 0
        self.by_type: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> MessageCounter:
        counter = self
        tell, ask = pykka.ActorRef.tell, pykka.ActorRef.ask
        start, schedule, cancel = threading.Thread.start, Timer.schedule, TimerHandle.cancel

        def counting_tell(self: Any, message: Any) -> None:
            with counter._lock:
                counter.tells += 1
                counter.by_type[type(message).__name__] += 1
            tell(self, message)

        def counting_ask(self: Any, message: Any, **kwargs: Any) -> Any:
            with counter._lock:
                counter.asks += 1
                counter.by_type[type(message).__name__] += 1
            return ask(self, message, **kwargs)

        def counting_start(self: threading.Thread) -> None:
            if not self.name.startswith("bench-"):
                with counter._lock:
                    counter.threads += 1
            start(self)

        def counting_schedule(self: Timer, delay: float, target: Any, message: Any) -> TimerHandle:
            with counter._lock:
                counter.scheduled += 1
            return schedule(self, delay, target, message)

        def counting_cancel(self: TimerHandle) -> None:
            with counter._lock:
                counter.cancelled += 1
            cancel(self)

        for owner, name, replacement in (
            (pykka.ActorRef, "tell", counting_tell),
            (pykka.ActorRef, "ask", counting_ask),
            (threading.Thread, "start", counting_start),
            (Timer, "schedule", counting_schedule),
            (TimerHandle, "cancel", counting_cancel),
        ):
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, replacement)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


def bench_per_order(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    batch = args.per_order_orders
    with durable_system(folder, "per-order") as system:
        run_clients(system, 16, 100, "warm")
        system.wait_idle(30)
        internals = engine_internals(system)
        before = journal_counters(system)
        threads_before = threading.active_count()
        with MessageCounter() as counter:
            run = run_clients(system, 16, batch, "po")
            system.wait_idle(30)
        after = journal_counters(system)
        pending = internals.timer.pending() if internals.timer is not None else None
        threads_after = threading.active_count()
    per = {
        "actor_messages": (counter.tells + counter.asks) / batch,
        "tells": counter.tells / batch,
        "asks": counter.asks / batch,
        "journal_appends": (after[0] - before[0]) / batch,
        "journal_commits": (after[1] - before[1]) / batch,
        "threads_started": counter.threads / batch,
        "timer_entries_scheduled": counter.scheduled / batch,
        "timer_entries_cancelled": counter.cancelled / batch,
    }
    result = {
        "orders": batch,
        "clients": 16,
        "failed": run["failed"],
        "per_order": per,
        "messages_by_type_per_order": {k: v / batch for k, v in counter.by_type.most_common()},
        "timer_pending_after_batch": pending,
        "threads_before": threads_before,
        "threads_after": threads_after,
    }
    print(f"  {batch} fault-free durable orders, 16 clients; counted in this process (the library's calls):")
    rows = [
        (
            "actor messages (tell + ask)",
            per["actor_messages"],
            f"{per['tells']:.2f} tell + {per['asks']:.2f} ask",
        ),
        ("journal appends (operations)", per["journal_appends"], ""),
        ("journal commits (16 clients)", per["journal_commits"], "group commit"),
        ("threads started", per["threads_started"], ""),
        ("timer entries scheduled", per["timer_entries_scheduled"], ""),
        ("timer entries cancelled", per["timer_entries_cancelled"], ""),
    ]
    for name, value, note in rows:
        print(f"    {name:<32} {value:8.2f} per order  {note}".rstrip())
    shown = "unreachable" if pending is None else f"{pending:,}"
    print(f"    {'timer pending after the batch':<32} {shown:>8}  (entries; {batch} orders done)")
    print(f"    {'live threads before / after':<32} {threads_before:>8} / {threads_after}")
    top = ", ".join(f"{k} {v:.1f}" for k, v in list(result["messages_by_type_per_order"].items())[:12])
    print(f"    messages per order by type: {top}", flush=True)
    return result


# --- critical path ---


def bench_critical_path(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    latency = args.latency
    plan = FaultPlan(min_latency=latency, max_latency=latency, seed=1)
    with durable_system(folder, "critical", inventory_faults=plan, payment_faults=plan) as system:
        run = run_clients(system, 1, args.critical_orders, "cp")
    p50 = run["p50_ms"] / 1000
    result = {"L_ms": latency * 1000, "p50_ms": run["p50_ms"], "p50_in_L": p50 / latency, "run": run}
    print(
        f"  L = {latency * 1000:.0f} ms on every call, {args.critical_orders} orders at 1 client: "
        f"p50 {run['p50_ms']:.1f} ms = {p50 / latency:.2f} L, p99 {run['p99_ms']:.1f} ms",
        flush=True,
    )
    target_row(
        "critical_path",
        "p50 latency, 1 client",
        p50 / latency,
        f"{run['p50_ms']:.1f} ms = {p50 / latency:.2f} L",
        "<= 2.3 L",
        f"L = {latency * 1000:.0f} ms; two calls in sequence: 2 L floor",
        p50 / latency <= 2.3,
    )
    return result


# --- services: the inventory and the payment as processes, next to in-process ---


def process_cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process `pid` has used so far, from /proc; 0 if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def bench_services(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """Durable orders/s at 64 clients and p50 at 1 client, in-process and against the inventory
    and the payment as `saga-actors serve` processes on 127.0.0.1 (each on a durable journal of its
    own), in one run; the CPU per order of the engine's process and of the services'."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print("  skipped: the services need aiohttp (pip install 'saga-actors[http]')", flush=True)
        return {"skipped": "aiohttp is not installed"}
    from saga_actors.actors.processes import ServiceProcess

    def measure(system: OrderSystem, prefix: str, pids: list[int]) -> dict[str, Any]:
        run_clients(system, 8, args.services_warm, f"{prefix}-warm")
        one = run_clients(system, 1, args.services_one, f"{prefix}-one")
        before = sum(process_cpu_seconds(pid) for pid in pids)
        many = run_clients(system, 64, args.services_many, f"{prefix}-many")
        services_cpu = sum(process_cpu_seconds(pid) for pid in pids) - before
        many["services_cpu_ms_per_order"] = 1000 * services_cpu / many["orders"]
        elsewhere = f", {many['services_cpu_ms_per_order']:.2f} ms in the services" if pids else ""
        print(
            f"  {prefix:>10}: {count(many['orders_per_s'])} orders/s at 64 clients (p50 "
            f"{many['p50_ms']:.1f} ms, p99 {many['p99_ms']:.1f} ms; CPU per order "
            f"{many['cpu_ms_per_order']:.2f} ms in the engine{elsewhere}), p50 {one['p50_ms']:.2f} ms "
            "at 1 client",
            flush=True,
        )
        return {"one_client": one, "clients_64": many}

    results: dict[str, Any] = {}
    with durable_system(folder, "services-local") as system:
        results["in_process"] = measure(system, "in-process", [])
    token = secrets.token_urlsafe(32)
    stocked = ",".join(f"{product}={10**9}" for product in range(1, PRODUCTS + 1))
    inventory = ServiceProcess(
        "inventory", os.path.join(folder, "services-inventory.db"), "--stock", stocked, token=token
    )
    payment = ServiceProcess("payment", os.path.join(folder, "services-payment.db"), token=token)
    with inventory, payment:
        remote = OrderSystem(
            journal_path=os.path.join(folder, "services-orders.db"),
            inventory=inventory.url,
            payment=payment.url,
            service_token=token,
        )
        with remote:
            pids = [pid for pid in (inventory.pid, payment.pid) if pid is not None]
            results["processes"] = measure(remote, "processes", pids)
    local, over = results["in_process"], results["processes"]
    rate, local_rate = over["clients_64"]["orders_per_s"], local["clients_64"]["orders_per_s"]
    target_row(
        "services",
        "orders/s at 64 clients, service processes",
        rate,
        f"{count(rate)} ({rate / local_rate:.2f}x in-process)",
        "none",
        f"in-process {count(local_rate)} orders/s, this run",
        None,
    )
    p50, local_p50 = over["one_client"]["p50_ms"], local["one_client"]["p50_ms"]
    target_row(
        "services",
        "p50 at 1 client, service processes",
        p50,
        f"{p50:.1f} ms (+{p50 - local_p50:.1f} ms)",
        "none",
        f"in-process {local_p50:.1f} ms, this run",
        None,
    )
    return results


# --- cluster: order nodes as processes, on SQLite and on PostgreSQL ---

BENCH_POSTGRES = "SAGA_ACTORS_BENCH_POSTGRES"  # a PostgreSQL server's URL for the cluster section
CLUSTER_CLIENTS = 64
TAKEOVER_LEASE = 2.0  # seconds: the lease of the take-over's two nodes
TAKEOVER_PAYMENT_LATENCY = 0.5  # seconds the payment service spends on each call during the take-over


class ClusterSkipped(Exception):
    """No PostgreSQL server for the cluster section; the message says why."""


def find_pg_ctl() -> str | None:
    """pg_ctl on PATH or the newest in /usr/lib/postgresql/*/bin (where .ci/postgres looks)."""
    import glob
    import shutil

    found = shutil.which("pg_ctl")
    if found:
        return found
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: [int(x) for x in
                      Path(p).parent.parent.name.split(".") if x.isdigit()])  # fmt: skip
    return versions[-1] if versions else None


@contextlib.contextmanager
def postgres_server() -> Iterator[dict[str, Any]]:
    """A PostgreSQL server for the section: {"url", "origin", "settings", "postmaster"}.

    SAGA_ACTORS_BENCH_POSTGRES if set (used as it is: its settings are reported, not changed);
    else a throwaway one from `.ci/postgres start`, restarted with fsync and full_page_writes
    on (the script runs it without, for the tests; command-line settings override ALTER SYSTEM,
    hence the restart), and stopped at the end whatever happens. ClusterSkipped if neither.
    """
    import psycopg

    given = os.environ.get(BENCH_POSTGRES)
    if given:
        try:
            psycopg.connect(given, autocommit=True, connect_timeout=5).close()
        except psycopg.Error as error:
            raise ClusterSkipped(f"cannot connect to {BENCH_POSTGRES}: {str(error).strip()[:160]}") from None
        yield {"url": given, "origin": BENCH_POSTGRES, "postmaster": None}
        return
    if find_pg_ctl() is None:
        raise ClusterSkipped(f"no PostgreSQL here (no pg_ctl) and {BENCH_POSTGRES} is not set")
    root = Path(__file__).resolve().parent.parent
    script = root / ".ci" / "postgres"
    started = subprocess.run(
        ["bash", str(script), "start"], cwd=root, capture_output=True, text=True, timeout=120, check=False
    )
    exports = dict(
        line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if "=" in line
    )
    env = {**os.environ, **exports}
    if started.returncode != 0 or "SAGA_ACTORS_TEST_POSTGRES" not in exports:
        if exports.get("SAGA_ACTORS_TEST_PGDATA"):
            subprocess.run(
                ["bash", str(script), "stop"], env=env, capture_output=True, timeout=60, check=False
            )
        why = (started.stderr.strip().splitlines() or [f"status {started.returncode}"])[-1]
        raise ClusterSkipped(f"bash .ci/postgres start failed: {why[:160]}")
    try:
        url, data = exports["SAGA_ACTORS_TEST_POSTGRES"], exports["SAGA_ACTORS_TEST_PGDATA"]
        pg_ctl, runas = exports["SAGA_ACTORS_TEST_PG_CTL"], exports.get("SAGA_ACTORS_TEST_PG_RUNAS", "")
        base = os.path.dirname(data)
        port = urllib.parse.urlsplit(url).port
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c max_connections=300 "
            "-c fsync=on -c full_page_writes=on"
        )
        command = [pg_ctl, "-D", data, "-l", os.path.join(base, "server.log"), "restart", "-m", "fast",
                   "-w", "-t", "60", "-o", options]  # fmt: skip
        if runas:
            command = ["runuser", "-u", runas, "--", *command]
        # The server's output goes to its log: a pipe would be held open by the server.
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90)
        postmaster = int(Path(data, "postmaster.pid").read_text().split()[0])
        yield {
            "url": url,
            "origin": "bash .ci/postgres start (restarted with fsync on)",
            "postmaster": postmaster,
        }
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, timeout=60, check=False)


def postgres_settings(url: str) -> dict[str, str]:
    import psycopg

    names = ("fsync", "full_page_writes", "synchronous_commit", "wal_sync_method", "server_version")
    with psycopg.connect(url, autocommit=True) as conn:
        return {name: str(conn.execute(f"SHOW {name}").fetchone()[0]) for name in names}  # type: ignore[index]


def database_url(server: str, name: str) -> str:
    parts = urllib.parse.urlsplit(server)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new, empty database on `server` (its URL), dropped WITH (FORCE) when the block ends."""
    import psycopg

    name = f"saga_bench_{secrets.token_hex(8)}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield database_url(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_commit_rate(url: str, seconds: float) -> float:
    """Commits/s of one connection inserting one row per transaction: the server's durable-write limit."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_commits (x bigint)")
        n, started = 0, time.perf_counter()
        while n < 50 or time.perf_counter() - started < seconds:
            conn.execute("INSERT INTO bench_commits VALUES (%s)", (n,))
            n += 1
        took = time.perf_counter() - started
        conn.execute("DROP TABLE bench_commits")
    return n / took


def children_cpu_seconds(parent: int | None) -> float:
    """The CPU time of `parent`'s live child processes (a PostgreSQL server's backends), from /proc."""
    if parent is None:
        return 0.0
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    total += process_cpu_seconds(int(entry.name))
    return total + process_cpu_seconds(parent)


async def post_orders(
    urls: list[str], token: str, orders: int, prefix: str, clients: int = CLUSTER_CLIENTS
) -> dict[str, Any]:
    """`clients` concurrent clients (one aiohttp session, keep-alive) placing `orders` orders,
    order i on node i mod len(urls): orders/s, p50/p99 latency, failures."""
    import asyncio

    import aiohttp

    latencies: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    counter = iter(range(orders))
    headers = {"Authorization": f"Bearer {token}"}

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:
            url = f"{urls[i % len(urls)]}/orders?timeout=60"
            began = time.perf_counter()
            try:
                async with session.post(url, json=request(f"{prefix}-{i}", 1 + i % PRODUCTS)) as answer:
                    body = await answer.json()
                    ok = answer.status == 200 and body.get("confirmed") is True
                    if not ok:
                        failures[f"{answer.status} {body.get('error', 'rolled back')}"] += 1
            except (TimeoutError, aiohttp.ClientError) as error:
                failures[type(error).__name__] += 1
            latencies.append(time.perf_counter() - began)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=90)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "orders": orders,
        "clients": clients,
        "seconds": elapsed,
        "orders_per_s": orders / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.5),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "failed": sum(failures.values()),
        "failures": dict(failures),
    }


def drive_nodes(
    args: argparse.Namespace, nodes: list[Any], token: str, prefix: str, postmaster: int | None
) -> dict[str, Any]:
    """A warm-up, then the measured orders over HTTP; the CPU per order of the node processes
    (and, beside them, of this process's clients and of the PostgreSQL server we started)."""
    import asyncio

    urls = [node.url for node in nodes]
    asyncio.run(post_orders(urls, token, args.cluster_warm, f"{prefix}-warm"))
    pids = [node.pid for node in nodes if node.pid is not None]
    nodes_cpu = sum(process_cpu_seconds(pid) for pid in pids)
    postgres_cpu = children_cpu_seconds(postmaster)
    client_cpu = time.process_time()
    run = asyncio.run(post_orders(urls, token, args.cluster_orders, prefix))
    client_cpu = time.process_time() - client_cpu
    nodes_cpu = sum(process_cpu_seconds(pid) for pid in pids) - nodes_cpu
    postgres_cpu = children_cpu_seconds(postmaster) - postgres_cpu
    run["nodes"] = len(nodes)
    run["nodes_cpu_ms_per_order"] = 1000 * nodes_cpu / run["orders"]
    run["clients_cpu_ms_per_order"] = 1000 * client_cpu / run["orders"]
    if postmaster is not None:
        run["postgres_cpu_ms_per_order"] = 1000 * postgres_cpu / run["orders"]
    return run


def measure_takeover(
    args: argparse.Namespace, server: str, folder: str, inventory_url: str, token: str
) -> dict[str, Any]:
    """Two nodes on PostgreSQL with a 2 s lease, a payment service spending 0.5 s on each call;
    orders in flight on node A, SIGKILL A: when its epoch moved on (B took its sagas over; the
    lease table polled every 10 ms), when every one of its orders was finished (B's GET
    /orders/<id> confirmed or cancelled) and when every one of its sagas had ended (the last
    event of each saga's stream final: compensations done too).

    Two waves, so that both ways a taken-over saga ends are measured: the first half of the
    orders is past its pivot at the kill (commit decided, the capture in flight: B finishes
    them, confirmed); the second half has just begun (the authorization in flight: B cannot
    authorize - the card is held in memory only - and rolls them back, cancelled).
    """
    import asyncio

    import aiohttp
    import psycopg

    from saga_actors.actors.processes import NodeProcess, ServiceProcess
    from saga_actors.actors.system import ORDER_SAGA
    from saga_actors.sagas.engine import FINAL_EVENTS, CommitDecided
    from saga_actors.sagas.host import saga_persistence_id

    n = args.takeover_orders
    latency = f"{TAKEOVER_PAYMENT_LATENCY},{TAKEOVER_PAYMENT_LATENCY}"
    payment = ServiceProcess(
        "payment", os.path.join(folder, "takeover-payment.db"), "--latency", latency, token=token
    )
    ids = [f"takeover-{i}" for i in range(n)]
    waves = [ids[: n // 2], ids[n // 2 :]]
    codec = order_codec()
    final = [codec.name_of(cls) for cls in FINAL_EVENTS]
    decided = codec.name_of(CommitDecided)
    headers = {"Authorization": f"Bearer {token}"}
    with fresh_database(server) as url, payment, contextlib.ExitStack() as stack:
        a, b = (
            stack.enter_context(
                NodeProcess(
                    url,
                    *("--node-id", name, "--lease", str(TAKEOVER_LEASE)),
                    *("--inventory", inventory_url, "--payment", payment.url),
                    token=token,
                )
            )
            for name in ("a", "b")
        )
        watch = psycopg.connect(url, autocommit=True)
        stack.callback(watch.close)

        def epoch() -> int | None:
            row = watch.execute("SELECT epoch FROM saga_actors_nodes WHERE node_id = 'a'").fetchone()
            return int(row[0]) if row else None

        def sagas(wanted: list[str]) -> tuple[int, int, int]:
            """Of the orders `wanted`: (sagas begun, commit decided, ended), from the journal."""
            ids = [saga_persistence_id(ORDER_SAGA, order_id) for order_id in wanted]
            row = watch.execute(
                "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM saga_actors_events e "
                "WHERE e.persistence_id = s.persistence_id AND e.type = %s)), "
                "count(*) FILTER (WHERE last_type = ANY(%s)) "
                "FROM saga_actors_streams s WHERE persistence_id = ANY(%s)",
                (decided, final, ids),
            ).fetchone()
            return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)

        async def until(condition: Callable[[], bool], seconds: float) -> bool:
            deadline = time.monotonic() + seconds
            while not condition():
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.01)
            return True

        async def scenario() -> dict[str, Any]:
            async with aiohttp.ClientSession(headers=headers) as session:

                async def place(order_id: str, i: int) -> int:
                    body = request(order_id, 1 + i % PRODUCTS)
                    try:
                        async with session.post(f"{a.url}/orders?timeout=60", json=body) as answer:
                            return answer.status
                    except aiohttp.ClientError:
                        return 0  # A was killed: no answer

                async def state(order_id: str) -> str | None:
                    with contextlib.suppress(aiohttp.ClientError, ValueError):
                        async with session.get(f"{b.url}/orders/{order_id}") as answer:
                            if answer.status == 200:
                                return str((await answer.json())["state"])
                    return None

                before = epoch()
                first, second = waves
                posts = [asyncio.ensure_future(place(order_id, i)) for i, order_id in enumerate(first)]
                await until(lambda: sagas(first)[1] == len(first), 30)  # past the pivot: capturing
                posts += [asyncio.ensure_future(place(order_id, i)) for i, order_id in enumerate(second)]
                await until(lambda: sagas(second)[0] == len(second), 30)  # begun: authorizing
                at_kill = {"first wave": sagas(first), "second wave": sagas(second)}
                answered = sum(p.done() for p in posts)
                a.kill()  # SIGKILL
                killed = time.monotonic()
                taken = None
                if await until(lambda: epoch() != before, 30):
                    taken = time.monotonic() - killed
                await asyncio.gather(*posts)
                done_after, states = None, [None] * n
                while time.monotonic() - killed < 60:
                    states = list(await asyncio.gather(*(state(order_id) for order_id in ids)))
                    if all(s in ("confirmed", "cancelled") for s in states):
                        done_after = time.monotonic() - killed
                        break
                    await asyncio.sleep(0.02)
                ended = None
                if await until(lambda: sagas(ids)[2] == n, max(0.0, 60 - (time.monotonic() - killed))):
                    ended = time.monotonic() - killed
                return {
                    "orders": n,
                    "at_kill": {
                        k: dict(zip(("begun", "commit_decided", "ended"), v, strict=True))
                        for k, v in at_kill.items()
                    },
                    "answered_before_kill": answered,
                    "epoch_before": before,
                    "taken_over_s": taken,
                    "all_finished_s": done_after,
                    "sagas_ended_s": ended,
                    "states": dict(collections.Counter(str(s) for s in states)),
                    "states_by_wave": [
                        dict(collections.Counter(str(s) for s in states[: len(first)])),
                        dict(collections.Counter(str(s) for s in states[len(first) :])),
                    ],
                }

        result = asyncio.run(scenario())
    result["lease_s"] = TAKEOVER_LEASE
    result["renew_every_s"] = TAKEOVER_LEASE / 3
    result["bound_s"] = TAKEOVER_LEASE + TAKEOVER_LEASE / 3
    result["payment_latency_s"] = TAKEOVER_PAYMENT_LATENCY
    return result


def bench_cluster(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """Durable orders/s through `saga-actors node` processes over HTTP (64 clients in one
    asyncio loop here, keep-alive), 1 node on SQLite, 1 on PostgreSQL (one writer, and a
    cluster of one), 3 on PostgreSQL, in front of the same two service processes; then a
    take-over: two nodes, SIGKILL one with orders in flight."""
    try:
        import aiohttp  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as missing:
        print(
            f"  skipped: the cluster needs {missing.name} (pip install 'saga-actors[http,postgres]')",
            flush=True,
        )
        return {"skipped": f"{missing.name} is not installed"}
    from saga_actors.actors.processes import NodeProcess, ServiceProcess

    try:
        with postgres_server() as server:
            return cluster_rows(args, folder, server, NodeProcess, ServiceProcess)
    except ClusterSkipped as skipped:
        print(f"  skipped: {skipped}", flush=True)
        return {"skipped": str(skipped)}


def cluster_rows(
    args: argparse.Namespace, folder: str, server: dict[str, Any], node_process: Any, service_process: Any
) -> dict[str, Any]:
    settings = postgres_settings(server["url"])
    with fresh_database(server["url"]) as url:
        pg_commits = postgres_commit_rate(url, 0.3 if args.quick else 1.0)
    durability = f"fsync={settings['fsync']}, full_page_writes={settings['full_page_writes']}, " \
                 f"synchronous_commit={settings['synchronous_commit']}"  # fmt: skip
    print(
        f"  PostgreSQL {settings['server_version']} ({server['origin']}): {durability}; "
        f"one connection commits {count(pg_commits)}/s",
        flush=True,
    )
    results: dict[str, Any] = {
        "postgres": {**settings, "origin": server["origin"], "commits_per_s": pg_commits}
    }
    token = secrets.token_urlsafe(32)
    stocked = ",".join(f"{product}={10**9}" for product in range(1, PRODUCTS + 1))
    inventory = service_process(
        "inventory", os.path.join(folder, "cluster-inventory.db"), "--stock", stocked, token=token
    )
    payment = service_process("payment", os.path.join(folder, "cluster-payment.db"), token=token)
    rows = [
        ("sqlite_1", "1 node, SQLite", 1, None),
        ("postgres_1_writer", "1 node, PostgreSQL, one writer", 1, None),
        ("postgres_1", "1 node, PostgreSQL, cluster mode", 1, "cluster"),
        ("postgres_3", "3 nodes, PostgreSQL", 3, "cluster"),
    ]
    machine_note = f"{args.machine['cpus']} cores shared by every process"
    with inventory, payment:
        services = [inventory.url, payment.url]
        for key, label, many, mode in rows:
            with contextlib.ExitStack() as stack:
                if key.startswith("sqlite"):
                    journal = os.path.join(folder, "cluster-node.db")
                else:
                    journal = stack.enter_context(fresh_database(server["url"]))
                nodes = []
                for i in range(many):
                    cluster = ("--node-id", f"n{i + 1}") if mode == "cluster" else ()
                    node = node_process(
                        journal, *cluster, "--inventory", services[0], "--payment", services[1], token=token
                    )
                    nodes.append(stack.enter_context(node))
                postmaster = None if key.startswith("sqlite") else server["postmaster"]
                run = drive_nodes(args, nodes, token, key, postmaster)
            results[key] = run
            extra = (
                f", PostgreSQL {run['postgres_cpu_ms_per_order']:.2f}"
                if "postgres_cpu_ms_per_order" in run
                else ""
            )
            print(
                f"  {label:<32}: {count(run['orders_per_s']):>5} orders/s at {CLUSTER_CLIENTS} clients "
                f"({run['orders']} orders, {run['failed']} failed; p50 {run['p50_ms']:.1f} ms, "
                f"p99 {run['p99_ms']:.1f} ms; CPU per order {run['nodes_cpu_ms_per_order']:.2f} ms in the "
                f"node{'s' if many > 1 else ''}, {run['clients_cpu_ms_per_order']:.2f} in the clients"
                f"{extra})",
                flush=True,
            )
            if key == "sqlite_1":
                limit = f"fsync {count(args.machine['fsync']['fsyncs_per_s'])}/s; {machine_note}"
            else:
                limit = (
                    f"PostgreSQL commit {count(pg_commits)}/s (fsync {settings['fsync']}, "
                    f"full_page_writes {settings['full_page_writes']}); {machine_note}"
                )
            compared = ""
            if key == "postgres_3" and "postgres_1" in results:
                compared = f", {run['orders_per_s'] / results['postgres_1']['orders_per_s']:.2f}x 1 node"
                limit += ": 3 nodes cannot scale here"
            target_row(
                "cluster",
                f"orders/s, {label}",
                run["orders_per_s"],
                f"{count(run['orders_per_s'])} (p50 {run['p50_ms']:.0f} ms, p99 {run['p99_ms']:.0f} ms; "
                f"node CPU {run['nodes_cpu_ms_per_order']:.2f} ms/order{compared})",
                "none",
                limit,
                None,
            )
        takeover = measure_takeover(args, server["url"], folder, services[0], token)
    results["takeover"] = takeover
    taken, done, ended = takeover["taken_over_s"], takeover["all_finished_s"], takeover["sagas_ended_s"]
    bound = takeover["bound_s"]

    def seconds(value: float | None) -> str:
        return f"{value:.2f} s" if value is not None else "never (60 s)"

    waves = " and ".join(
        f"{', '.join(f'{k} {v}' for k, v in wave.items())}" for wave in takeover["states_by_wave"]
    )
    print(
        f"  take-over: {takeover['orders']} orders in flight on node a at the SIGKILL (half past the pivot, "
        f"half authorizing; {takeover['answered_before_kill']} answered), payment "
        f"{TAKEOVER_PAYMENT_LATENCY} s a call: a's epoch moved on after {seconds(taken)}, every order "
        f"confirmed or cancelled on b after {seconds(done)} ({waves}), every saga ended after "
        f"{seconds(ended)}; bound: lease {TAKEOVER_LEASE:g} s + renewal {TAKEOVER_LEASE / 3:.2f} s "
        f"= {bound:.2f} s",
        flush=True,
    )
    target_row(
        "cluster",
        "take-over after SIGKILL (a's epoch bumped)",
        taken,
        seconds(taken),
        f"<= lease + renewal = {bound:.2f} s",
        f"lease {TAKEOVER_LEASE:g} s, renewed every {TAKEOVER_LEASE / 3:.2f} s; polled every 10 ms",
        taken is not None and taken <= bound,
    )
    target_row(
        "cluster",
        f"{takeover['orders']} orders of the killed node finished",
        done,
        f"{seconds(done)} after the kill ({waves}); sagas ended {seconds(ended)}",
        "none",
        f"take-over + the rest of each saga (payment {TAKEOVER_PAYMENT_LATENCY} s a call)",
        None,
    )
    return results


# --- group commit ---


def bound(commits_per_s: float, fsyncs_per_s: float) -> str:
    return "fsync-bound" if commits_per_s >= 0.8 * fsyncs_per_s else "CPU-bound"


def bench_group_commit(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """Group commit on against off, on the whole system and on the journal alone; each run's commits/s
    against the disk's fsync rate (measured before and after them: the higher is the disk's)."""
    probes = [fsync_rate(folder, 1.0)["fsyncs_per_s"]]
    runs: dict[str, dict[str, Any]] = {}
    for label, group in (("on", True), ("off", False)):
        with journal_group_commit(group), durable_system(folder, f"gc-{label}") as system:
            before = journal_counters(system)
            run = run_clients(system, 64, args.orders, "g")
            after = journal_counters(system)
        appends, commits = after[0] - before[0], after[1] - before[1]
        run.update(
            appends=appends,
            commits=commits,
            appends_per_order=appends / args.orders,
            commits_per_order=commits / args.orders,
            rate=run["orders_per_s"],
        )
        runs[f"system {label}"] = run

    # The journal alone, 64 writers appending to distinct streams: no engine around it.
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

        before_commits = journal.transactions
        started = time.perf_counter()
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(write, range(64)))
        took = time.perf_counter() - started
        commits = journal.transactions - before_commits
        journal.close()
        appends = 64 * per_writer
        runs[f"journal {label}"] = {
            "appends": appends,
            "commits": commits,
            "seconds": took,
            "appends_per_s": appends / took,
            "rate": appends / took,
        }
    probes.append(fsync_rate(folder, 1.0)["fsyncs_per_s"])
    fsyncs = max(probes)
    print(f"  fsync {count(probes[0])}/s before, {count(probes[1])}/s after: {count(fsyncs)}/s", flush=True)
    for name, run in runs.items():
        run["commits_per_s"] = run["commits"] / run["seconds"]
        run["appends_per_commit"] = run["appends"] / run["commits"] if run["commits"] else 0.0
        run["fsync_busy"] = run["commits_per_s"] / fsyncs
        run["bound"] = bound(run["commits_per_s"], fsyncs)
        unit = "orders/s" if name.startswith("system") else "appends/s"
        print(
            f"  {name + ',':<11} 64 {'clients' if unit == 'orders/s' else 'writers'}: "
            f"{count(run.pop('rate')):>6} {unit:<9} {count(run['commits_per_s']):>6} commits/s "
            f"= {run['fsync_busy']:4.0%} of fsync, {run['appends_per_commit']:5.1f} appends/commit: "
            f"{run['bound']}",
            flush=True,
        )
    on, off = runs["system on"], runs["system off"]
    ratio = on["orders_per_s"] / off["orders_per_s"]
    journal_ratio = runs["journal on"]["appends_per_s"] / runs["journal off"]["appends_per_s"]
    print(f"  on / off: whole system {ratio:.1f}x, journal alone {journal_ratio:.1f}x", flush=True)
    # With group commit off every append is one commit: the disk alone would allow this many orders/s.
    off_fsync_ceiling = fsyncs / off["appends_per_order"] if off["appends_per_order"] else 0.0
    target_row(
        "group_commit",
        "whole system on/off, 64 clients",
        ratio,
        f"{ratio:.1f}x ({count(on['orders_per_s'])} / {count(off['orders_per_s'])} orders/s)",
        ">= 5x",
        f"off is {off['bound']} ({off['fsync_busy']:.0%} of fsync {count(fsyncs)}/s: "
        f"the disk alone allows {count(off_fsync_ceiling)} orders/s off)",
        ratio >= 5,
    )
    return {
        "on": on,
        "off": off,
        "ratio": ratio,
        "journal_appends_per_s": {k: runs[f"journal {k}"]["appends_per_s"] for k in ("on", "off")},
        "journal": {k: runs[f"journal {k}"] for k in ("on", "off")},
        "journal_ratio": journal_ratio,
        "fsync_probes_per_s": probes,
        "fsyncs_per_s": fsyncs,
        "off_orders_per_s_fsync_ceiling": off_fsync_ceiling,
    }


# --- recovery time ---


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


def read_seconds(path: str) -> float:
    """How long reading the whole file takes (from the page cache, usually): a floor for a recovery."""
    started = time.perf_counter()
    for p in (path, path + "-wal"):
        if os.path.exists(p):
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass
    return time.perf_counter() - started


def bench_recovery(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for events in args.recovery_events:
        for label, every in (("no_snapshots", None), ("snapshots", 1000)):
            path = os.path.join(folder, f"recovery-{events}-{label}.db")
            write_inventory_history(path, events, 5000 if every else None)
            size, read = journal_bytes(path), read_seconds(path)
            journal = SQLiteJournal(path, order_codec())
            gc.collect()
            started = time.perf_counter()
            ref = InventoryActor.start_recovered(journal, snapshot_every=every, timeout=3600)
            took = time.perf_counter() - started
            ref.stop()
            journal.close()
            results[f"{events}/{label}"] = {
                "events": events,
                "snapshots": every is not None,
                "seconds": took,
                "file_bytes": size,
                "file_read_seconds": read,
            }
            print(
                f"  {events:>8} events, {label:<12}: recovery {took * 1000:8.1f} ms "
                f"(file {size / 2**20:.1f} MiB, read in {read * 1000:.1f} ms)",
                flush=True,
            )
    snap = results.get("100000/snapshots")
    if snap is not None:
        target_row(
            "recovery",
            "inventory recovery, 100k events, snapshots",
            snap["seconds"],
            f"{snap['seconds'] * 1000:.0f} ms",
            "<= 1 s",
            f"file {snap['file_bytes'] / 2**20:.1f} MiB read in {snap['file_read_seconds'] * 1000:.0f} ms",
            snap["seconds"] <= 1.0,
        )
    return results


# --- history: flat in history ---


def retention_option(seconds: float) -> tuple[dict[str, Any], str]:
    """`retention=seconds` if this OrderSystem takes it, and what was done, in words."""
    try:
        parameters = inspect.signature(OrderSystem).parameters
    except (TypeError, ValueError):
        parameters = {}  # type: ignore[assignment]
    if "retention" not in parameters:
        return {}, "retention unavailable (OrderSystem takes no `retention`): the history runs without it"
    return {"retention": seconds}, f"retention={seconds:g} s"


class History:
    """One SQLite journal that accumulates finished orders across systems started on it in turn."""

    def __init__(self, args: argparse.Namespace, folder: str) -> None:
        self.path = os.path.join(folder, "history.db")
        self.chunk = args.history_chunk
        self.kwargs, self.retention = retention_option(args.retention)
        self.finished = 0  # orders placed on this journal that got their outcome
        self.failed = 0
        self.serial = 0
        self.system: OrderSystem | None = None

    def start(self) -> float:
        """Start a system on the journal; seconds until it has recovered and confirmed a first order."""
        started = time.perf_counter()
        try:
            system = durable_system(os.path.dirname(self.path), "history", **self.kwargs)
        except (TypeError, ValueError) as error:  # `retention` there, but not taking seconds
            self.retention += f" - refused ({error}); the history runs without it"
            self.kwargs = {}
            started = time.perf_counter()
            system = durable_system(os.path.dirname(self.path), "history")
        system.start()
        self.system = system
        self.place_batch(1, "probe")
        return time.perf_counter() - started

    def stop(self) -> tuple[int, int, int]:
        """Drain and stop the system: (finished orders, the journal's file bytes, bytes in use),
        measured once it is closed (its log checkpointed)."""
        assert self.system is not None
        self.system.wait_idle(120)
        self.system.stop()
        self.system = None
        used = journal_used_bytes(self.path)
        size = journal_bytes(self.path)
        return self.finished, size, size if used is None else used

    def place_batch(self, n: int, prefix: str) -> None:
        assert self.system is not None
        first, self.serial = self.serial, self.serial + n
        futures = [
            self.system.submit(request(f"{prefix}-{i}", 1 + i % PRODUCTS)) for i in range(first, first + n)
        ]
        for future in futures:
            try:
                future.get(300)
                self.finished += 1
            except Exception:
                self.failed += 1

    def build(self, upto: int, deadline: float) -> bool:
        """Place orders (submitted `chunk` at a time) until `upto` have finished; False if the deadline
        came first."""
        while self.finished < upto:
            if time.monotonic() >= deadline:
                return False
            self.place_batch(min(self.chunk, upto - self.finished), "h")
        return True

    def window(self, orders: int) -> dict[str, float]:
        """`orders` at 64 clients (after a short warm-up): orders/s and CPU per order."""
        assert self.system is not None
        run_clients(self.system, 8, 100, f"warm{self.serial}")
        self.serial += 1
        run = run_clients(self.system, 64, orders, f"w{self.serial}")
        self.serial += 1
        self.finished += 100 + orders - int(run["failed"])
        self.failed += int(run["failed"])
        return run


def bench_history(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """CPU per order, orders/s and journal bytes per order early and late in one journal's history,
    and the restart on the long history."""
    history = History(args, folder)
    first, last, window = args.history_first, args.history_last, args.history_window
    print(f"  {history.retention}", flush=True)
    section_started = time.perf_counter()
    deadline = time.monotonic() + args.history_budget
    history.start()
    history.build(first, deadline)
    at_first = history.stop()  # (finished, file bytes, bytes in use)
    restart_first = history.start()
    early = history.window(window)
    after_early = history.stop()
    building = time.perf_counter()
    history.start()
    reached = history.build(last, deadline)
    build_seconds = time.perf_counter() - building
    built = history.finished - after_early[0]
    print(
        f"  history: {count(built)} orders placed in {build_seconds:.0f} s "
        f"({built / build_seconds:,.0f}/s, {history.chunk} submitted at a time)"
        + ("" if reached else f"; the budget of {args.history_budget:.0f} s ran out before {count(last)}"),
        flush=True,
    )
    before_late = history.stop()
    read = read_seconds(history.path)
    restart_last = history.start()
    late = history.window(window)
    after_late = history.stop()

    def per_order(start: tuple[int, int, int], end: tuple[int, int, int], index: int) -> float:
        return (end[index] - start[index]) / (end[0] - start[0])

    nothing = (0, 0, 0)
    file_first, used_first = per_order(nothing, at_first, 1), per_order(nothing, at_first, 2)
    file_early, used_early = per_order(at_first, after_early, 1), per_order(at_first, after_early, 2)
    file_late, used_late = per_order(before_late, after_late, 1), per_order(before_late, after_late, 2)
    for label, at, run, file_bytes, used, restart in (
        ("early", at_first, early, file_early, used_early, restart_first),
        ("late", before_late, late, file_late, used_late, restart_last),
    ):
        print(
            f"  {label}, after {count(at[0])} finished: {count(run['orders_per_s'])} orders/s, "
            f"CPU {run['cpu_ms_per_order']:.2f} ms/order at 64 clients; journal {at[1] / 2**20:.1f} MiB "
            f"({at[2] / 2**20:.1f} MiB in use), then +{file_bytes:,.0f} bytes/order on file, "
            f"+{used:,.0f} in use; restart {restart * 1000:.0f} ms",
            flush=True,
        )
    print(
        f"  the first {count(at_first[0])} orders: {file_first:,.0f} bytes/order on file, "
        f"{used_first:,.0f} in use",
        flush=True,
    )
    note = "" if reached else f" (reached {count(before_late[0])} of {count(last)})"
    cpu_ratio = late["cpu_ms_per_order"] / early["cpu_ms_per_order"]
    target_row(
        "history",
        f"CPU/order after {count(last)} finished",
        late["cpu_ms_per_order"],
        f"{late['cpu_ms_per_order']:.2f} ms = {cpu_ratio:.2f}x{note}",
        f"<= 1.2 x after {count(first)}",
        f"after {count(at_first[0])}: {early['cpu_ms_per_order']:.2f} ms",
        reached and cpu_ratio <= 1.2,
    )
    # Both must hold: the file's growth understates a window that reuses the free pages of deleted
    # rows, and the pages in use understate a file whose high-water mark grows with the snapshots.
    target_row(
        "history",
        "journal bytes per finished order",
        file_late,
        f"{file_late:,.0f} on file, {used_late:,.0f} in use (last window){note}",
        "both <= 1.2 x the first",
        f"first {count(at_first[0])}: {file_first:,.0f} on file, {used_first:,.0f} in use",
        reached and file_late <= 1.2 * file_first and used_late <= 1.2 * used_first,
    )
    target_row(
        "history",
        f"restart on {count(last)} finished orders",
        restart_last,
        f"{restart_last * 1000:,.0f} ms{note}",
        "<= 1 s",
        f"file {before_late[1] / 2**20:.1f} MiB read in {read * 1000:.0f} ms; "
        f"restart at {count(at_first[0])}: {restart_first * 1000:.0f} ms",
        reached and restart_last <= 1.0,
    )
    return {
        "retention": history.retention,
        "retention_kwargs": history.kwargs,
        "first": first,
        "last": last,
        "reached": reached,
        "finished_first": at_first[0],
        "finished_last": before_late[0],
        "failed": history.failed,
        "build_seconds": build_seconds,
        "build_orders": built,
        "section_seconds": time.perf_counter() - section_started,
        "window_orders": window,
        "early": early,
        "late": late,
        "cpu_ratio": cpu_ratio,
        "journal_at_first": dict(zip(("finished", "file_bytes", "used_bytes"), at_first, strict=True)),
        "journal_after_early_window": dict(
            zip(("finished", "file_bytes", "used_bytes"), after_early, strict=True)
        ),
        "journal_before_late_window": dict(
            zip(("finished", "file_bytes", "used_bytes"), before_late, strict=True)
        ),
        "journal_after_late_window": dict(
            zip(("finished", "file_bytes", "used_bytes"), after_late, strict=True)
        ),
        "bytes_per_order_first": {"file": file_first, "used": used_first},
        "bytes_per_order_early_window": {"file": file_early, "used": used_early},
        "bytes_per_order_last_window": {"file": file_late, "used": used_late},
        "restart_first_seconds": restart_first,
        "restart_last_seconds": restart_last,
        "file_read_seconds": read,
    }


# --- in_flight: N orders in flight at once, in a fresh process ---


def bench_in_flight(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """Runs the child below in a fresh interpreter, so that its peak RSS is its own."""
    n = args.in_flight_orders
    child_folder = tempfile.mkdtemp(prefix="in-flight-", dir=folder)
    stderr_path = os.path.join(folder, "in-flight.stderr")
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-in-flight",
        str(n),
        "--child-folder",
        child_folder,
        "--child-deadline",
        str(args.in_flight_timeout),
        "--thread-cap",
        str(args.thread_cap),
        "--rss-cap-mib",
        str(args.rss_cap_mib),
    ]
    started = time.perf_counter()
    result: dict[str, Any]
    with open(stderr_path, "w") as stderr:
        try:
            done = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=args.in_flight_timeout + 60
            )
            lines = [line for line in done.stdout.splitlines() if line.startswith(CHILD_MARK)]
            if lines:
                result = json.loads(lines[-1][len(CHILD_MARK) :])
            else:
                result = {"error": f"the child exited with status {done.returncode} and no result"}
            result["exit_status"] = done.returncode
        except subprocess.TimeoutExpired:
            result = {"error": f"the child was killed after {args.in_flight_timeout + 60:.0f} s"}
    result["parent_seconds"] = time.perf_counter() - started
    tail = Path(stderr_path).read_text(errors="replace").splitlines()
    result["stderr_lines"] = len(tail)
    result["stderr_tail"] = tail[-5:]
    complete = not result.get("error") and not result.get("aborted") and result.get("answered") == n
    result["complete"] = complete
    problem = result.get("aborted") or result.get("error")
    got = collections.defaultdict(float, result)
    print(
        f"  {count(n)} orders submitted at once (latency ~1 s per call, attempt timeout 30 s): "
        f"{count(got['confirmed'])} confirmed, {count(got['rolled_back'])} rolled back, "
        f"{count(got['errors'])} errors in {got['wall_seconds']:.1f} s "
        f"(submitting took {got['submit_seconds']:.1f} s); peak RSS {got['peak_rss_mib']:,.0f} MiB, "
        f"peak threads {count(got['peak_threads'])}, retries {count(got['retries'])}",
        flush=True,
    )
    if problem:
        print(f"  not complete: {problem}", flush=True)
    for line in result["stderr_tail"]:
        print(f"  child stderr: {line[:200]}")
    memory = args.machine["memory_bytes"]
    threads = args.machine["thread_limits"]
    why = f" ({problem})" if problem else ""
    incomplete = "" if complete else " - incomplete"
    confirmed = result.get("confirmed", 0)
    target_row(
        "in_flight",
        f"{count(n)} orders in flight: confirmed",
        confirmed,
        f"{count(confirmed)} in {result.get('wall_seconds', 0):.0f} s{why}",
        f"all {count(n)}",
        "two ~1 s calls in sequence: ~2 s floor per order",
        complete and confirmed == n,
    )
    rss = result.get("peak_rss_mib", 0.0)
    target_row(
        "in_flight",
        "peak RSS (the child's own)",
        rss,
        f"{rss:,.0f} MiB{incomplete}",
        "< 2 GiB",
        f"memory {memory / GIB:.1f} GiB",
        complete and rss < 2048,
    )
    peak = result.get("peak_threads", 0)
    target_row(
        "in_flight",
        "peak threads (sampled)",
        peak,
        f"{count(peak)}{incomplete}",
        "< 100",
        ", ".join(f"{k} {count(v)}" for k, v in threads.items()),
        complete and peak < 100,
    )
    retries = result.get("retries", 0)
    target_row(
        "in_flight",
        "retries (engine's own queueing)",
        retries,
        f"{count(retries)}{incomplete}",
        "0",
        "attempt timeout 30 s = 30x the ~1 s latency",
        complete and retries == 0,
    )
    return result


def read_status() -> tuple[int, int]:
    """(threads, resident bytes) of this process, from /proc/self/status; (0, 0) elsewhere."""
    threads = rss = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return threads, rss


def in_flight_child(args: argparse.Namespace) -> None:
    """Submit N orders at once to a system with ~1 s service latency and wait for them all.

    Prints one line of JSON (after CHILD_MARK) and exits with os._exit: a
    system that did not cope is not stopped cleanly (that could take as long
    again). Safety caps: the machine's thread ids are shared with every other
    process on it, so past `--thread-cap` OS threads (or `--rss-cap-mib` of
    resident memory) the child stops and reports what it saw then; both caps
    are far above the targets, so a run that hits one has missed them anyway.
    """
    n = args.child_in_flight
    state: dict[str, Any] = {
        "orders": n,
        "submitted": 0,
        "answered": 0,
        "confirmed": 0,
        "rolled_back": 0,
        "errors": 0,
        "error_kinds": {},
        "first_error": None,
        "peak_threads": threading.active_count(),
        "peak_os_threads": 0,
        "peak_rss_sampled_mib": 0.0,
        "aborted": None,
        "error": None,
        "wall_seconds": 0.0,
        "submit_seconds": 0.0,
        "retries": 0,
        "thread_cap": args.thread_cap,
        "rss_cap_mib": args.rss_cap_mib,
    }
    emitted = threading.Lock()
    system: OrderSystem | None = None
    started = time.perf_counter()

    def finish() -> None:
        if not emitted.acquire(blocking=False):
            return
        if system is not None:
            with contextlib.suppress(Exception):
                state["retries"] = system.metrics()["retries"]
                state["metrics"] = system.metrics()
        if not state["wall_seconds"]:
            state["wall_seconds"] = time.perf_counter() - started
        state["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        os.write(1, (CHILD_MARK + json.dumps(state) + "\n").encode())
        os._exit(0)

    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            state["peak_threads"] = max(state["peak_threads"], threading.active_count())
            threads, rss = read_status()
            state["peak_os_threads"] = max(state["peak_os_threads"], threads)
            state["peak_rss_sampled_mib"] = max(state["peak_rss_sampled_mib"], rss / 2**20)
            if threads > args.thread_cap:
                state["aborted"] = (
                    f"stopped at {threads:,} threads (the bench's cap {args.thread_cap:,}; "
                    f"{state['submitted']:,} submitted, {state['answered']:,} answered after "
                    f"{time.perf_counter() - started:.1f} s)"
                )
                finish()
            if rss > args.rss_cap_mib * 2**20:
                state["aborted"] = (
                    f"stopped at {rss / 2**20:,.0f} MiB resident (the bench's cap {args.rss_cap_mib:,} MiB; "
                    f"{state['submitted']:,} submitted, {state['answered']:,} answered)"
                )
                finish()
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
    sampler.start()
    try:
        latency = {"min_latency": 0.9, "max_latency": 1.1}
        system = OrderSystem(
            journal_path=os.path.join(args.child_folder, "in-flight.db"),
            stock=dict.fromkeys(range(1, PRODUCTS + 1), 10**9),
            inventory_faults=FaultPlan(**latency, seed=1),
            payment_faults=FaultPlan(**latency, seed=2),
            retry=RetryPolicy(attempt_timeout=30.0),
        )
        system.start()
        started = time.perf_counter()
        futures = []
        for i in range(n):
            futures.append(system.submit(request(f"f{i}", 1 + i % PRODUCTS)))
            state["submitted"] = i + 1
        state["submit_seconds"] = time.perf_counter() - started
        deadline = time.monotonic() + args.child_deadline
        for future in futures:
            try:
                ok = future.get(max(0.0, deadline - time.monotonic()))
                state["confirmed" if ok else "rolled_back"] += 1
            except TimeoutError:
                state["error"] = (
                    f"deadline of {args.child_deadline:.0f} s passed with "
                    f"{n - state['answered']:,} orders unanswered"
                )
                break
            except Exception as error:
                state["errors"] += 1
                kinds = state["error_kinds"]
                kinds[type(error).__name__] = kinds.get(type(error).__name__, 0) + 1
                state["first_error"] = state["first_error"] or f"{type(error).__name__}: {error}"[:300]
            state["answered"] += 1
        state["wall_seconds"] = time.perf_counter() - started
    except BaseException as error:
        state["error"] = f"{type(error).__name__}: {error}"[:300]
    running.clear()
    finish()


# --- the run ---

SECTIONS: dict[str, Callable[[argparse.Namespace, str], dict[str, Any]]] = {
    "throughput": bench_throughput,
    "limits": bench_limits,
    "ask_ratio": bench_ask_ratio,
    "per_order": bench_per_order,
    "critical_path": bench_critical_path,
    "services": bench_services,
    "cluster": bench_cluster,
    "group_commit": bench_group_commit,
    "recovery": bench_recovery,
    "history": bench_history,
    "in_flight": bench_in_flight,
}
ALIASES = {"scale": "in_flight"}  # the in-flight section's earlier name


def configure(args: argparse.Namespace) -> None:
    quick = args.quick
    args.clients = [1, 64] if quick else [1, 8, 64, 256]
    args.orders = 100 if quick else 4000
    args.asks = 2000 if quick else 20000
    args.commits = 200 if quick else 2000
    args.ratio_orders = 300 if quick else 4000
    args.per_order_orders = 100 if quick else 500
    args.latency = 0.02
    args.critical_orders = 5 if quick else 40
    args.services_warm = 100 if quick else 300
    args.services_one = 20 if quick else 200
    args.services_many = 256 if quick else 4000
    args.cluster_warm = 32 if quick else 300
    args.cluster_orders = 128 if quick else 2000
    args.takeover_orders = 16 if quick else 48
    args.recovery_events = [2000] if quick else [10_000, 100_000, 1_000_000]
    args.history_first = args.history_first or (500 if quick else 1000)
    args.history_last = args.history_last or (5000 if quick else 100_000)
    args.history_window = 200 if quick else 2000
    args.history_chunk = 1000
    args.history_budget = args.history_budget or (60.0 if quick else 240.0)
    args.in_flight_orders = args.in_flight_orders or (5000 if quick else 100_000)
    args.in_flight_timeout = args.in_flight_timeout or (120.0 if quick else 300.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small numbers (a smoke run, under a minute)")
    parser.add_argument("--only", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="where to write the results (default: benchmarks/results.json for a full run, "
        "nowhere for --quick or --only, so a partial run never replaces the reference results)",
    )
    parser.add_argument("--history-first", type=int, help="history: the early window after N finished (1000)")
    parser.add_argument("--history-last", type=int, help="history: the late window after N finished (100000)")
    parser.add_argument(
        "--history-budget", type=float, help="history: seconds allowed for building the history (240)"
    )
    parser.add_argument(
        "--retention", type=float, default=5.0, help="history: retention in seconds, if any (5)"
    )
    parser.add_argument("--in-flight-orders", type=int, help="in_flight: orders submitted at once (100000)")
    parser.add_argument(
        "--in-flight-timeout", type=float, help="in_flight: seconds the child may wait for them (300)"
    )
    parser.add_argument(
        "--thread-cap", type=int, default=10_000, help="in_flight: stop the child past this many threads"
    )
    parser.add_argument(
        "--rss-cap-mib", type=int, default=4096, help="in_flight: stop the child past this resident size"
    )
    parser.add_argument("--child-in-flight", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    parser.add_argument("--child-deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_in_flight is not None:
        in_flight_child(args)
        return 0  # not reached: the child exits with os._exit
    sections = list(SECTIONS)
    if args.only:
        asked = [ALIASES.get(s, s) for s in args.only.split(",")]
        unknown = set(asked) - set(SECTIONS)
        if unknown:
            parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
        sections = asked
    configure(args)
    run_started = time.perf_counter()
    results: dict[str, Any] = {"quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="saga-bench-") as folder:
        args.machine = results["machine"] = machine(folder, args.quick)
        print_machine(args.machine)
        timings = results["section_seconds"] = {}
        for name in sections:
            print(f"{name}:", flush=True)
            started = time.perf_counter()
            results[name] = SECTIONS[name](args, folder)
            timings[name] = time.perf_counter() - started
            print(f"  ({timings[name]:.0f} s)", flush=True)
    results["targets"] = TARGETS
    results["total_seconds"] = time.perf_counter() - run_started
    print()
    targets = [r for r in TARGETS if r["result"] != "-"]
    print(f"== Targets ({sum(r['result'] == 'PASS' for r in targets)} of {len(targets)} met) ==")
    if TARGETS:
        print_table(TARGETS)
    print(f"run took {results['total_seconds']:.0f} s")
    target = args.json or (None if (args.quick or args.only) else "benchmarks/results.json")
    if target is not None:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {target}")
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
