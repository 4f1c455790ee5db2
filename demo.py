"""A concurrency simulation of the order engine, with the consistency checks at the end.

    python demo.py                      # ~1000 orders against flaky, slow, crashing services
    python demo.py --kill-and-recover   # ... killed with SIGKILL part-way, then recovered
    python demo.py --help

Many customers order from a small catalogue at once: some submit the same
order twice, some ask for more than is left, some pay with a declined card.
The services fail transiently, answer slowly and crash. At the end the demo
prints what happened and checks that nothing is half-done. Exit status: 0 if
every check passes, 1 if a check fails, 2 for a bad option (a bad --journal
too), 130 when stopped by Ctrl-C (SIGINT), 143 by SIGTERM, 141 when the reader
of its output goes away (`| head`), quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import queue
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any

if __name__ == "__main__":
    # Ctrl-C or SIGTERM while the library loads (a few tenths of a second, before main()
    # handles them): exit at once, quietly, with 128 + the signal; nothing is open yet.
    def _stopped_while_loading(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, _stopped_while_loading)
    signal.signal(signal.SIGTERM, _stopped_while_loading)

from saga_actors._cli import (
    StopRequest,
    error,
    file_problem,
    journal_problem,
    new_lock_file,
    number,
    open_problem,
    plural,
    remove_stray_lock,
    run_stoppable,
    whole_number,
)
from saga_actors.actors import FaultPlan, OrderSystem, RetryPolicy
from saga_actors.actors.consistency import Check
from saga_actors.actors.validation import MAX_QUANTITY

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROG = "demo.py"
GOOD_CARDS = ("4242424242424242", "5555555555554444")
DECLINED_CARDS = ("4000000000000002", "4000000000009995")
CURRENCY = "USD"  # every order of the demo is in it
PLOT_EXTRA = "pip install 'saga-actors[plot]' (from a checkout: pip install -e '.[plot]')"


# --- options ---


MAX_ORDERS = 1_000_000


MAX_RESTOCK = 1_000_000_000


def _whole_number(text: str, low: int, high: float, expected: str) -> int:
    value = whole_number(text)  # ASCII digits only
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {expected}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1, math.inf, "at least 1")


def _seed(text: str) -> int:
    return _whole_number(text, 0, 2**63 - 1, "from 0 to 2**63-1")


def _restock(text: str) -> int:
    return _whole_number(text, 0, MAX_RESTOCK, f"from 0 to {MAX_RESTOCK:,} units")


def _rate(text: str) -> float:
    value = number(text)  # ASCII digits only
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _latency(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        low, high = (number(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or high is None:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in seconds (e.g. 0.001,0.01), got {text!r}")
    if not 0.0 <= low <= high <= 10.0:
        raise argparse.ArgumentTypeError(f"need 0 <= MIN <= MAX <= 10 seconds, got {text!r}")
    return low, high


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="demo.py",
        description="A concurrency simulation of the order engine, with consistency checks at the end.",
    )
    parser.add_argument("--orders", type=_positive_int, default=1000, help="orders to place (default 1000)")
    parser.add_argument(
        "--concurrency", type=_positive_int, default=64, help="customers ordering at once (default 64)"
    )
    parser.add_argument(
        "--products", type=_positive_int, default=8, help="products in the catalogue (default 8)"
    )
    parser.add_argument(
        "--failure-rate",
        type=_rate,
        default=0.1,
        help="chance a service call is refused as unavailable (default 0.1)",
    )
    parser.add_argument(
        "--crash-rate",
        type=_rate,
        default=0.02,
        help="chance a service call crashes the service actor (default 0.02)",
    )
    parser.add_argument(
        "--latency",
        type=_latency,
        default=(0.001, 0.02),
        metavar="MIN,MAX",
        help="seconds on the wire per call (default 0.001,0.02)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=7,
        help="fixes the workload and each service's fault draws; not the thread interleaving, "
        "so outcomes still vary a little (default 7)",
    )
    parser.add_argument(
        "--journal",
        metavar="PATH",
        help="keep the journal in PATH; running again on it continues from its state",
    )
    parser.add_argument(
        "--restock",
        type=_restock,
        default=0,
        metavar="N",
        help="deliver N more units of each product before the run (default 0)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw throughput and latency over the run, restarts and the kill marked "
        f"(needs matplotlib: {PLOT_EXTRA})",
    )
    parser.add_argument(
        "--kill-and-recover",
        action="store_true",
        help="run the simulation in a child process, SIGKILL it part-way, then recover",
    )
    parser.add_argument(
        "--services",
        choices=("in-process", "processes"),
        help="where the inventory and payment services run: in this process (in-process, the "
        "default), or as two child processes over HTTP (processes; needs aiohttp: "
        f"{HTTP_EXTRA})",
    )
    parser.add_argument(
        "--kill-service",
        choices=SERVICES,
        help="SIGKILL this service part-way and restart it on the same port and journal "
        "(implies --services processes)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=whole_number, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.failure_rate + args.crash_rate > 1.0:
        parser.error("--failure-rate plus --crash-rate must not exceed 1")
    if args.products > 1000 or args.concurrency > 1000:
        parser.error("--products and --concurrency are limited to 1000")
    if args.orders > MAX_ORDERS:
        parser.error(f"--orders is limited to {MAX_ORDERS:,}")
    if args.kill_service and args.services == "in-process":
        parser.error("--kill-service needs --services processes")
    args.services = args.services or ("processes" if args.kill_service else "in-process")
    if args.services == "processes" and args.kill_and_recover:
        parser.error("--kill-and-recover runs the in-process services; with --services processes, "
                     "--kill-service kills one of them")  # fmt: skip
    return args


# --- the workload (the same seed gives the same workload) ---


@dataclass
class Workload:
    stock: dict[int, int]  # the initial stock of a new journal
    requests: list[dict[str, Any]]  # in submission order; duplicates repeat an earlier request
    too_large: set[str] = field(default_factory=set)  # order ids asking more than all stock ever


def _stock(args: argparse.Namespace, rng: random.Random) -> dict[int, int]:
    """The catalogue's initial stock: the workload's first draws."""
    products = range(101, 101 + args.products)
    # An order wants ~4.4 units on average (1.75 products, 2.5 units of each); stock covers
    # about 70% of the demand, so the orders that come late find some products sold out.
    per_product = 0.7 * 4.4 * args.orders / len(products)
    return {p: max(1, int(rng.uniform(0.6, 1.4) * per_product)) for p in products}


def initial_stock(args: argparse.Namespace) -> dict[int, int]:
    """The stock of a new journal: `make_workload(...).stock`, without making the orders."""
    return _stock(args, random.Random(args.seed))


def make_workload(args: argparse.Namespace, run: int, received: dict[int, int] | None = None) -> Workload:
    """The run's workload; the same seed gives the same one.

    About 3% of the orders are deliberately too large: each asks for more of a
    product than all of it there will ever have been by the end of the run -
    `received` (units ever stocked before the run, per product; the initial
    stock for a new journal) plus `--restock` - so that no restock makes one fit.
    """
    rng = random.Random(args.seed)
    stock = _stock(args, rng)
    products = list(stock)
    ever = stock if received is None else received
    prices = {p: Decimal(rng.randint(199, 4999)) / 100 for p in products}
    requests: list[dict[str, Any]] = []
    too_large: set[str] = set()
    for i in range(args.orders):
        draw = rng.random()
        if requests and draw < 0.06:
            requests.append(rng.choice(requests[-50:]))  # a customer clicks "buy" twice
            continue
        chosen = rng.sample(products, k=min(len(products), rng.choice((1, 1, 2, 3))))
        items = [{"product_id": p, "quantity": rng.randint(1, 4)} for p in chosen]
        order_id = f"r{run}-{i:05d}"
        if draw > 0.97:  # more than there ever was, whatever the restock
            more = ever.get(chosen[0], 0) + args.restock + rng.randint(1, 5)
            # The largest quantity an order may ask: past it, only a journal that has been
            # stocked with a million units of the product could serve the order.
            items[0]["quantity"] = min(more, MAX_QUANTITY)
            too_large.add(order_id)
        amount = sum(prices[item["product_id"]] * item["quantity"] for item in items)
        requests.append(
            {
                "user_id": rng.randint(1, 5000),
                "order_id": order_id,
                "items": items,
                "payment_info": {
                    "card_number": rng.choice(DECLINED_CARDS)
                    if rng.random() < 0.05
                    else rng.choice(GOOD_CARDS),
                    "expiry": "12/30",
                    "amount": str(amount),
                    "currency": CURRENCY,
                },
            }
        )
    return Workload(stock, requests, too_large)


def build_system(args: argparse.Namespace, journal: str, stock: dict[int, int] | None) -> OrderSystem:
    low, high = args.latency
    faults = {
        "failure_rate": args.failure_rate,
        "crash_rate": args.crash_rate,
        "min_latency": low,
        "max_latency": high,
    }
    retry = RetryPolicy(initial_interval=0.01, maximum_interval=0.25, maximum_attempts=6, attempt_timeout=0.5)
    if _services is not None:  # --services processes: the stock and the faults are the services'
        return _services.system(journal, retry)
    return OrderSystem(
        journal_path=journal,
        stock=stock,
        inventory_faults=FaultPlan(**faults, seed=args.seed),
        payment_faults=FaultPlan(**faults, seed=args.seed + 1),
        retry=retry,
    )


# --- the journal ---


class BadJournal(Exception):
    """The journal cannot be used (in use too); the message is one line for the user (exit status 2)."""


def open_system(args: argparse.Namespace, journal: str, stock: dict[int, int] | None) -> OrderSystem:
    """A started system on `journal`; BadJournal if the file cannot serve as one."""
    system = build_system(args, journal, stock)
    lock = new_lock_file(journal)
    try:
        system.start()
    except Exception as failed:
        problem = open_problem(journal, failed)
        if problem is None:
            raise
        remove_stray_lock(lock)  # the library makes it before it refuses the file, and leaves it
        raise BadJournal(problem) from None
    return system


# --- progress ---


class Progress:
    """Live progress: one redrawn line on a terminal, plain periodic lines otherwise.

    It counts submissions as they are answered (a repeat submission is answered with its
    order's outcome, and counted again); the summary counts distinct orders too. The bar
    keeps one width from the first count to the last.
    """

    RATE_WIDEST = "9999"  # room for answers per second; a faster rate may be cut off at the edge

    def __init__(self, total: int, stream: IO[str], quiet: bool = False) -> None:
        self.total, self.stream, self.quiet = total, stream, quiet
        self.tty = stream.isatty()
        self.done = self.confirmed = self.cancelled = 0
        self.started = time.perf_counter()
        self._last = 0.0
        self._drawn = -1  # `done` when the line was last drawn
        self._lock = threading.Lock()

    def record(self, confirmed: bool | None) -> None:
        with self._lock:
            self.done += 1
            if confirmed is True:
                self.confirmed += 1
            elif confirmed is False:
                self.cancelled += 1
            now = time.perf_counter()
            if self.done == self.total or now - self._last >= (0.1 if self.tty else 1.0):
                self._last = now
                self._draw(now)

    def finish(self) -> None:
        """End the live line, drawing the last count if it was not (e.g. after a kill)."""
        with self._lock:
            if self._drawn != self.done:
                self._draw(time.perf_counter())
            if self.tty and not self.quiet:
                self.stream.write("\n")
                self.stream.flush()
            self.quiet = True  # nothing more from the callers still finishing

    def _stats(self, done: int, confirmed: int, cancelled: int, rate: str) -> str:
        return (
            f" submissions {done}/{self.total} answered: confirmed {confirmed},"
            f" cancelled {cancelled}, {rate}/s"
        )

    def bar_width(self, columns: int) -> int:
        """The bar's width on a line of `columns`: what the widest count leaves (at most 24),
        so that the bar keeps its width while the counts grow."""
        # confirmed + cancelled <= total: for each width of one, the other is widest when the
        # one is the smallest number that wide.
        splits = [0] + [10**d for d in range(len(str(self.total))) if 10**d <= self.total]
        widest = max(len(self._stats(self.total, c, self.total - c, self.RATE_WIDEST)) for c in splits)
        return max(0, min(24, columns - 1 - widest - 2))  # the bar gives way first

    def _draw(self, now: float) -> None:
        if self.quiet:
            return
        self._drawn = self.done
        rate = self.done / max(now - self.started, 1e-9)
        stats = self._stats(self.done, self.confirmed, self.cancelled, f"{rate:.0f}")
        columns = shutil.get_terminal_size((80, 24)).columns if self.tty else 80
        width = self.bar_width(columns)
        filled = int(width * self.done / self.total)
        text = (f"[{'#' * filled}{'.' * (width - filled)}]" if width else "") + stats
        with STOP.writing():  # a closed pipe (`| head`) stops the run; the customer lives on
            if self.tty:
                text = text[: max(columns - 1, 1)]  # a redrawn line must never wrap
                self.stream.write("\r" + text + "\x1b[K")  # clear what a longer line left
            else:
                self.stream.write(text + "\n")
            self.stream.flush()


# --- running ---


@dataclass
class RunResult:
    outcomes: dict[str, bool] = field(default_factory=dict)  # by order id: distinct orders
    answers: Counter[str] = field(default_factory=Counter)  # by submission: confirmed, cancelled
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0


class Timeline:
    """What `--plot` draws: when each submission was answered and how long it took, when
    an actor restarted, when the child was killed and the run recovered. Times are
    seconds since the first order was placed."""

    def __init__(self) -> None:
        self.answers: list[tuple[float, float]] = []  # (time, latency in seconds)
        self.restarts: list[float] = []
        self.kill: float | None = None
        self.recovered: float | None = None
        self._started: float | None = None
        self._restarts_seen = 0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            if self._started is None:
                self._started = time.perf_counter()
            return time.perf_counter() - self._started

    def record(self, latency: float, restarts: int) -> None:
        """One answer; `restarts` is the system's restart counter when it came."""
        at = self.now()
        with self._lock:
            self.answers.append((at, latency))
            self.restarts += [at] * max(0, restarts - self._restarts_seen)
            self._restarts_seen = max(restarts, self._restarts_seen)

    def new_system(self) -> None:
        """A new OrderSystem (after the kill): its restart counter starts at 0."""
        with self._lock:
            self._restarts_seen = 0


def place_all(
    system: OrderSystem,
    requests: list[dict[str, Any]],
    concurrency: int,
    progress: Progress,
    report: IO[str] | None = None,
    timeline: Timeline | None = None,
) -> RunResult:
    result = RunResult()
    lock = threading.Lock()

    def place(request: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            outcome: bool | None = system.place_order(request, timeout=120)
        except Exception as error:
            outcome = None
            with lock:
                result.errors[type(error).__name__] += 1
        took = time.perf_counter() - started
        restarts = system.metrics()["restarts"] if report is not None or timeline is not None else 0
        with lock:
            result.latencies.append(took)
            if outcome is not None:
                result.outcomes[request["order_id"]] = outcome
                result.answers["confirmed" if outcome else "cancelled"] += 1
                if report is not None:
                    with STOP.writing():
                        report.write(f"OUTCOME {request['order_id']} {int(outcome)} {took:.6f} {restarts}\n")
                        report.flush()
        if timeline is not None:
            timeline.record(took, restarts)
        progress.record(outcome)

    left = iter(requests)
    taking = threading.Lock()

    def customer() -> None:
        while not STOP.is_set():  # asked to stop: place no more orders
            with taking:
                request = next(left, None)
            if request is None:
                return
            place(request)

    check_stop()
    started = time.perf_counter()
    if timeline is not None:
        timeline.now()  # the clock starts with the first order
    customers = [
        threading.Thread(target=customer, name=f"customer-{n}", daemon=True)
        for n in range(min(concurrency, len(requests)))
    ]
    for thread in customers:
        thread.start()
    stopping = False
    for thread in customers:
        while thread.is_alive():
            thread.join(0.1)  # and see to a stop request meanwhile
            if STOP.is_set() and not stopping:
                stopping = True
                progress.quiet = True
                system.stop()  # every caller still waiting gets SystemNotRunning at once
    check_stop()
    result.elapsed = time.perf_counter() - started
    progress.finish()
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_number(system: OrderSystem) -> int:
    """Order ids are "r<run>-<n>": a run on a kept journal continues with fresh ids."""
    prefixes = {order_id.split("-", 1)[0] for order_id in system.orders()}
    return 1 + max((int(p[1:]) for p in prefixes if p[:1] == "r" and p[1:].isdigit()), default=0)


def announce(args: argparse.Namespace, journal: str, out: IO[str]) -> None:
    """The journal's path, once it is known to be usable."""
    if not args.child:
        out.write(_fit(f"journal: {journal}{'' if args.journal else ' (temporary)'}\n"))
        out.flush()


def settle(system: OrderSystem, timeout: float) -> bool:
    """`system.wait_idle(timeout)`, seeing to a stop request (check_stop) meanwhile."""
    deadline = time.monotonic() + timeout
    while not system.wait_idle(min(0.1, max(deadline - time.monotonic(), 0.0))):
        check_stop()
        if time.monotonic() >= deadline:
            return False
    return True


def recovery_line(found: dict[str, int]) -> str:
    return (
        f"recovery: {plural(found['sagas_resumed'], 'saga')} resumed ({found['rolled_forward']} rolled "
        f"forward, {found['rolled_back']} rolled back); orders whose saga never began: "
        f"{found['orders_never_started']}"
    )


def recovered(system: OrderSystem) -> dict[str, int]:
    """What the system's start found unfinished in the journal (`OrderSystem.recovery`)."""
    report = system.recovery()
    return {
        "sagas_resumed": report.sagas_resumed,
        "rolled_forward": report.rolled_forward,
        "rolled_back": report.rolled_back,
        "orders_never_started": report.orders_never_started,
    }


def resume(system: OrderSystem, args: argparse.Namespace, out: IO[str]) -> dict[str, int]:
    """What the start found unfinished in the journal (the orders in flight when an earlier run
    on it was stopped or killed): said, and finished before this run places its orders, so that
    the stock this run starts from holds no reservation of theirs."""
    found = recovered(system)
    if (found["sagas_resumed"] or found["orders_never_started"]) and not args.child:
        out.write(
            _fit(
                f"{recovery_line(found)}\n  an earlier run's orders, in flight when it stopped: "
                "they finish before this run places its own\n"
            )
        )
        out.flush()
    settle(system, 60)
    found["still_in_flight"] = system.metrics()["in_flight"]  # only if a resumed saga is stuck
    return found


def stock_levels(system: OrderSystem) -> dict[int, dict[str, int]]:
    return {
        p: {"on_hand": v.on_hand, "reserved": v.reserved, "received": v.received}
        for p, v in system.inventory().items()
    }


def deliver(system: OrderSystem, args: argparse.Namespace, workload: Workload) -> dict[int, int]:
    """`--restock N`: N more units of each product of the catalogue, before the run."""
    delivery = dict.fromkeys(workload.stock, args.restock) if args.restock else {}
    if delivery:
        system.restock(delivery)
    return delivery


# --- the summary ---


@dataclass
class Scope:
    """What the summary covers: this run's workload and what it found and did."""

    workload: Workload
    stock_before: dict[int, dict[str, int]]  # when this run began, before any restock
    restocked: dict[int, int]
    result: RunResult | None
    resumed: dict[str, int] | None  # what the start found unfinished in the journal (see `resume`)
    recovery: dict[str, Any] | None = None  # --kill-and-recover: what the kill left and recovery found


def summarize(system: OrderSystem, scope: Scope) -> dict[str, Any]:
    settle(system, 60)
    in_flight = system.metrics()["in_flight"]
    all_orders = system.orders()
    inventory = system.inventory()
    payments = system.payments()
    metrics = system.metrics()
    checks = system.check_consistency()
    workload, result, recovery = scope.workload, scope.result, scope.recovery
    if recovery is not None:
        changed = sorted(
            o
            for o, ok in recovery["reported"].items()
            if all_orders[o].state != ("confirmed" if ok else "cancelled")
        )
        checks.append(
            Check(
                "outcomes reported before the kill unchanged",
                not changed,
                ", ".join(changed[:5]) or f"{len(recovery['reported'])} outcomes",
            )
        )
    if result is not None:
        unanswered = sum(result.errors.values())
        checks.append(
            Check(
                "every caller got its outcome",
                unanswered == 0,
                ", ".join(f"{n} x {name}" for name, n in sorted(result.errors.items()))
                or f"{len(result.latencies)} callers",
            )
        )
    mine = {r["order_id"] for r in workload.requests}
    orders = {o: v for o, v in all_orders.items() if o in mine}  # this run's (the checks cover all)
    reasons = Counter(v.reason for v in orders.values() if v.state == "cancelled")
    # After a kill, the whole workload is placed again on purpose: the submissions of orders
    # the journal already held are answered from it, and are not counted as repeats.
    resubmitted = recovery["resubmissions_answered_from_journal"] if recovery else 0
    run = workload.requests[0]["order_id"].split("-", 1)[0] if workload.requests else "r?"
    summary: dict[str, Any] = {
        "orders": {
            "covers": f"this run's orders (ids {run}-*)",
            "submitted": len(workload.requests),
            "distinct": len(mine),
            "answers": {  # per submission, as the progress line counts them
                "confirmed": result.answers["confirmed"] if result else 0,
                "cancelled": result.answers["cancelled"] if result else 0,
            },
            "confirmed": sum(1 for v in orders.values() if v.state == "confirmed"),
            "cancelled": sum(1 for v in orders.values() if v.state == "cancelled"),
            "pending": sum(1 for v in orders.values() if v.state == "pending"),
            "cancelled_by_reason": dict(reasons.most_common()),
            # on purpose: asking more of a product than there ever was, whatever the restock
            "larger_than_all_stock": {
                "distinct": len(workload.too_large),
                "confirmed": sum(
                    1 for o in workload.too_large if o in orders and orders[o].state == "confirmed"
                ),
            },
            "duplicates_answered_from_first_outcome": metrics["duplicates"] - resubmitted,
            "in_journal": len(all_orders),
            "in_flight": in_flight,
        },
        "activity": {
            "covers": "since recovery (the killed child's are not counted)" if recovery else "this run",
            **{k: metrics[k] for k in ("retries", "compensations", "restarts")},
        },
        "stock": {
            str(p): {
                "before_on_hand": scope.stock_before.get(p, {}).get("on_hand", 0),
                "before_reserved": scope.stock_before.get(p, {}).get("reserved", 0),
                "restocked": scope.restocked.get(p, 0),
                "on_hand": v.on_hand,
                "reserved": v.reserved,
            }
            for p, v in inventory.items()
        },
        "payments": {
            "covers": "this run's orders",
            **_payment_totals(v for o, v in payments.items() if o in mine),
            "all_runs_in_memory": _payment_totals(payments.values()),
        },
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        "ok": all(c.ok for c in checks),
    }
    if result is not None and result.latencies:
        summary["performance"] = {
            "covers": "the placement after recovery" if recovery else "this run",
            "seconds": round(result.elapsed, 3),
            "submissions_answered_per_second": round(len(result.latencies) / result.elapsed, 1),
            "latency_ms": {
                q: round(1000 * percentile(result.latencies, v), 1)
                for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
            },
            "errors": dict(result.errors),
        }
    if recovery is not None:
        summary["recovery"] = {k: v for k, v in recovery.items() if k != "reported"}
        summary["recovery"]["at_start"] = scope.resumed
    else:
        summary["recovery"] = scope.resumed
    return summary


def _payment_totals(payments: Any) -> dict[str, Any]:
    captured, voided = [], []
    for payment in payments:
        if payment.state == "captured":
            captured.append(payment.amount)
        elif payment.state == "voided":
            voided.append(payment.amount)
    cents = Decimal("0.01")
    return {
        "currency": CURRENCY,
        "captured": len(captured),
        "captured_total": str(sum(captured, Decimal(0)).quantize(cents)),
        "voided": len(voided),
        "voided_total": str(sum(voided, Decimal(0)).quantize(cents)),
    }


def money(currency: str, amount: str) -> str:
    """`USD 55,763.04`: the currency, thousands separated, two decimals."""
    return f"{currency} {Decimal(amount):,.2f}"


def print_summary(summary: dict[str, Any], out: IO[str]) -> None:
    o = summary["orders"]
    r = summary["recovery"]
    killed = r is not None and "answers_before_kill" in r
    resumed = r.get("at_start") if killed else r

    def w(text: str) -> None:
        out.write(_fit(text))

    w(f"\n== Orders: {o['covers']} ==\n")
    again = ", all placed again after recovery" if killed else ""
    w(f"  {o['submitted']} submissions of {o['distinct']} distinct orders{again}\n")
    answers, after = o["answers"], " after recovery" if killed else ""
    w(
        f"  answers{after}, one per submission: confirmed {answers['confirmed']}, "
        f"cancelled {answers['cancelled']}\n"
    )
    w(f"  distinct orders: confirmed {o['confirmed']}, cancelled {o['cancelled']}, pending {o['pending']}\n")
    for reason, count in o["cancelled_by_reason"].items():
        w(f"    cancelled: {reason:<20} {count}\n")
    large = o["larger_than_all_stock"]
    if large["distinct"]:
        w(
            f"  larger than all stock ever, on purpose: {plural(large['distinct'], 'order')}, "
            f"{large['confirmed'] or 'none'} confirmed\n"
        )
    if killed:
        w(
            f"  placed again after recovery and answered from the journal: "
            f"{plural(r['resubmissions_answered_from_journal'], 'submission')} "
            f"(of the {plural(r['orders_in_journal_at_recovery'], 'order')} placed before the kill)\n"
        )
    repeats = o["duplicates_answered_from_first_outcome"]
    w(f"  repeat submissions answered from the first outcome: {repeats}\n")
    if o["in_journal"] != o["distinct"]:
        w(f"  the journal holds {o['in_journal']} orders from every run; the checks cover them all\n")
    a = summary["activity"]
    w(
        f"  {a['covers']}: retries {a['retries']}, compensations {a['compensations']}, "
        f"actor restarts {a['restarts']}\n"
    )
    if resumed and (resumed["sagas_resumed"] or resumed["orders_never_started"]):
        w("\n== Recovery: an earlier run's unfinished orders, found at the start ==\n")
        w(
            f"  sagas resumed {resumed['sagas_resumed']}: rolled forward {resumed['rolled_forward']}, "
            f"rolled back {resumed['rolled_back']}; orders whose saga never began "
            f"{resumed['orders_never_started']} (cancelled)\n"
        )
        if resumed["still_in_flight"]:
            w(f"  {plural(resumed['still_in_flight'], 'saga')} still in flight when this run began\n")
        else:
            w("  every one finished before this run's orders were placed\n")
    if killed:
        w("\n== Recovery after SIGKILL ==\n")
        w(
            f"  child killed after {plural(r['answers_before_kill'], 'answered submission')} "
            f"({plural(r['orders_reported_before_kill'], 'distinct order')})\n"
        )
        w(f"  orders of this run placed before the kill: {r['orders_in_journal_at_recovery']}\n")
        w(f"    {r['orders_reported_before_kill']:6d}  their outcome reported before the kill\n")
        w(
            f"    {r['orders_finished_before_kill_unreported']:6d}  finished before the kill, "
            f"but their outcome was not reported\n"
        )
        w(
            f"    {r['sagas_resumed']:6d}  unfinished, their sagas resumed: {r['rolled_forward']} rolled "
            f"forward, {r['rolled_back']} rolled back\n"
        )
        w(f"    {r['orders_never_started']:6d}  their saga never began: cancelled at recovery\n")
    if "performance" in summary:
        p = summary["performance"]
        lat = p["latency_ms"]
        w(f"\n== Performance: {p['covers']} ==\n")
        w(f"  {p['submissions_answered_per_second']} submissions answered per second over {p['seconds']} s\n")
        w(f"  latency of a submission: p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms\n")
        if p["errors"]:
            w(f"  errors: {p['errors']}\n")
    if "services" in summary:
        print_services(summary["services"], w)
    restocked = any(s["restocked"] for s in summary["stock"].values())
    head = "before this run" + (", +restocked" if restocked else "")
    w(f"\n== Stock ==   on hand and reserved: {head} -> after\n")
    for product, s in summary["stock"].items():
        delivery = f" +{s['restocked']:<5d}" if restocked else ""
        w(
            f"  product {product}: {s['before_on_hand']:5d} {s['before_reserved']:3d}{delivery}  ->  "
            f"{s['on_hand']:5d} {s['reserved']:3d}\n"
        )
    if any(s["before_reserved"] for s in summary["stock"].values()):
        w(
            "  reserved before this run: units held by an earlier run's orders still in flight "
            "(resumed at the start)\n"
        )
    pay, every = summary["payments"], summary["payments"]["all_runs_in_memory"]
    w(f"\n== Payments: {pay['covers']} ==\n")
    w(
        f"  captured {pay['captured']} ({money(pay['currency'], pay['captured_total'])}),"
        f" voided {pay['voided']} ({money(pay['currency'], pay['voided_total'])})\n"
    )
    if (every["captured"], every["voided"]) != (pay["captured"], pay["voided"]):
        w(
            f"  every run's, still in memory (the retention window): captured {every['captured']} "
            f"({money(every['currency'], every['captured_total'])}), voided {every['voided']} "
            f"({money(every['currency'], every['voided_total'])})\n"
        )
    w("\n== Consistency checks: every order in the journal ==\n")
    for check in summary["checks"]:
        mark = "PASS" if check["ok"] else "FAIL"
        line = f"  [{mark}] {check['name']}"
        detail = f"({check['detail']})" if check["detail"] else ""
        if detail and len(line) + 2 + len(detail) < 80:
            line += "  " + detail
        elif detail:  # on lines of its own, so an 80-column terminal does not wrap it
            line += "\n" + textwrap.fill(detail, 79, initial_indent=" " * 9, subsequent_indent=" " * 9)
        w(line + "\n")
    w("\nall checks passed\n" if summary["ok"] else "\nSOME CHECKS FAILED\n")


# --- modes ---


def simulate(
    args: argparse.Namespace, journal: str, out: IO[str], timeline: Timeline | None
) -> dict[str, Any]:
    """Run the workload on `journal` in this process."""
    with open_system(args, journal, initial_stock(args)) as system:  # the stock of a new journal
        announce(args, journal, out)
        run = args.run or run_number(system)
        resumed = resume(system, args, out)
        before = stock_levels(system)
        workload = make_workload(args, run, {p: s["received"] for p, s in before.items()})
        restocked = deliver(system, args, workload)
        if args.child:  # what the parent's summary starts from
            stock = {str(p): [s["on_hand"], s["reserved"], s["received"]] for p, s in before.items()}
            sys.stdout.write(f"BEFORE {json.dumps({'stock': stock, 'restocked': args.restock})}\n")
            sys.stdout.flush()
        progress = Progress(len(workload.requests), out, quiet=args.child)
        report = sys.stdout if args.child else None
        result = place_all(system, workload.requests, args.concurrency, progress, report, timeline)
        return summarize(system, Scope(workload, before, restocked, result, resumed))


class ChildFailed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def child_command(args: argparse.Namespace, journal: str, run: int) -> list[str]:
    """The command that runs this run's simulation in a child process, on `journal`."""
    low, high = args.latency
    options = {
        "--orders": args.orders,
        "--concurrency": args.concurrency,
        "--products": args.products,
        "--failure-rate": args.failure_rate,
        "--crash-rate": args.crash_rate,
        "--latency": f"{low!r},{high!r}",
        "--seed": args.seed,
        "--restock": args.restock,
        "--journal": journal,
        "--run": run,
    }
    flat = [str(part) for option, value in options.items() for part in (option, value)]
    return [sys.executable, os.path.abspath(__file__), *flat, "--child"]


def lines_until_stopped(stream: IO[str]) -> Iterator[str]:
    """The lines of `stream`, read on a thread of its own so that a stop request (check_stop)
    is seen even while no line comes."""
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def read() -> None:
        try:
            for line in stream:
                lines.put(line)
        except (OSError, ValueError):  # closed under it: the reader has stopped
            pass
        finally:
            lines.put(None)

    threading.Thread(target=read, name="child-output", daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            check_stop()
            continue
        check_stop()
        if line is None:
            return
        yield line


# --- the services as processes (--services processes, --kill-service) ---

if TYPE_CHECKING:
    from saga_actors.actors.processes import ServiceProcess

SERVICES = ("inventory", "payment")
HTTP_EXTRA = "pip install 'saga-actors[http]' (from a checkout: pip install -e '.[http]')"
RunMode = Callable[[argparse.Namespace, str, IO[str], "Timeline | None"], dict[str, Any]]


def service_journals(journal: str) -> dict[str, str]:
    """Each service's journal, next to the demo's: `orders.db` -> `orders-inventory.db`, ..."""
    stem, extension = os.path.splitext(journal)
    return {service: f"{stem}-{service}{extension or '.db'}" for service in SERVICES}


def services_problem(args: argparse.Namespace) -> str | None:
    """Why the services cannot run where asked, found before anything runs; None if they can."""
    if args.services == "processes":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            return f"--services processes needs aiohttp, which is not installed: {HTTP_EXTRA}"
    if args.journal and os.path.exists(args.journal):  # a kept journal keeps where its stock is
        theirs = [path for path in service_journals(args.journal).values() if os.path.exists(path)]
        if args.services == "processes" and not theirs:
            return (
                f"--journal {args.journal}: its runs had the services in-process (the stock is in "
                "it); run it without --services processes, or give a new journal"
            )
        if args.services == "in-process" and theirs:
            return (
                f"--journal {args.journal}: its runs had the services as processes (the stock is in "
                f"{theirs[0]}); run it with --services processes, or give a new journal"
            )
    return None


class ServiceProcesses:
    """`--services processes`: the inventory and the payment as `saga-actors serve` children on
    free ports of 127.0.0.1, each with a journal next to the demo's (in its temporary folder
    unless --journal), a token made for this run (in their environment), the demo's faults (they
    strike in the services now: the same seeds as in-process) and its initial stock. With
    --kill-service, one of them is SIGKILLed part-way and restarted on the same port and journal.
    Stopped (SIGTERM, then SIGKILL) whatever happens: a normal end, an error, Ctrl-C or SIGTERM."""

    def __init__(self, args: argparse.Namespace, journal: str, out: IO[str]) -> None:
        from saga_actors.actors.processes import ServiceProcess

        self.args, self.out = args, out
        self.token = secrets.token_urlsafe(32)
        self.journals = service_journals(journal)
        low, high = args.latency
        faults = ["--failure-rate", str(args.failure_rate), "--crash-rate", str(args.crash_rate)]
        faults += ["--latency", f"{low!r},{high!r}"]
        # The engine abandons a call after twice its attempt timeout (0.5 s): a service need not
        # wait longer for an actor that crashed while handling it (and a SIGTERM drains at once).
        faults += ["--request-timeout", "1"]
        # For --kill-service: the run's number changes the order ids only, not how many there are.
        self._distinct = len({r["order_id"] for r in make_workload(args, 1).requests})
        stock = ",".join(f"{p}={n}" for p, n in initial_stock(args).items())  # if its journal is new
        own = {
            "inventory": ("--stock", stock, "--seed", str(args.seed)),
            "payment": ("--seed", str(args.seed + 1)),
        }
        self.restarts: Counter[str] = Counter()  # the services' actor restarts, from their logs
        self.processes: dict[str, ServiceProcess] = {
            name: ServiceProcess(
                name, self.journals[name], *faults, *own[name], token=self.token, keep=1 << 16,
                on_stderr_line=lambda line, name=name: self._logged(name, line),
            )
            for name in SERVICES
        }  # fmt: skip
        self.pids: dict[str, list[int]] = {name: [] for name in SERVICES}
        self.gate = threading.RLock()  # held while a service is down on purpose (--kill-service)
        self.killed: dict[str, Any] | None = None
        self._failed: str | None = None  # why a killed service did not come back
        self._system: OrderSystem | None = None
        self._system_started = time.perf_counter()
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    def _logged(self, service: str, line: str) -> None:
        if f"restarted {service} (restart" in line:  # its supervisor restarted the actor
            self.restarts[service] += 1

    def __enter__(self) -> ServiceProcesses:
        from saga_actors.actors.processes import ServiceFailed

        try:
            for name, service in self.processes.items():
                service.start(check=check_stop)
                self.pids[name].append(service.pid or 0)
            # Within the try: a closed pipe (`| head`) here must stop the services too.
            for n, (name, service) in enumerate(self.processes.items()):
                self.out.write(
                    f"{'services:' if n == 0 else '':<10}{name:<10}{service.url} (pid {service.pid})\n"
                )
            self.out.flush()
        except ServiceFailed as failed:
            self.__exit__()
            raise ChildFailed(2 if failed.status == 2 else 1, str(failed)) from None
        except BaseException:
            self.__exit__()
            raise
        if self.args.kill_service:
            self._watcher = threading.Thread(target=self._watch, name="kill-service", daemon=True)
            self._watcher.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._watcher is not None:
            self._watcher.join()
        for service in self.processes.values():
            service.stop()

    def system(self, journal: str, retry: RetryPolicy) -> OrderSystem:
        """An order system on `journal` over the two services (see `build_system`)."""
        urls = {name: service.url for name, service in self.processes.items()}
        system = ServiceOrderSystem(self, journal_path=journal, **urls, service_token=self.token, retry=retry)
        self._system, self._system_started = system, time.perf_counter()
        return system

    def check_up(self) -> None:
        """ChildFailed if a service killed on purpose could not be restarted."""
        if self._failed is not None:
            raise ChildFailed(1, self._failed)

    def _watch(self) -> None:
        """--kill-service: once a seeded share (30-60 %) of this run's distinct orders has
        finished, SIGKILL the service and restart it on the same port and journal."""
        threshold = max(1, int(self._distinct * random.Random(self.args.seed).uniform(0.3, 0.6)))
        while not self._done.wait(0.02):
            system = self._system
            if system is None or not system.running:
                continue
            try:
                counts = system.metrics()
            except Exception:  # stopped meanwhile: look again, or stop with the run
                continue
            finished = counts["orders_confirmed"] + counts["orders_cancelled"]
            if finished >= threshold and counts["in_flight"]:
                self._kill_and_restart(self.args.kill_service, finished)
                return

    def _kill_and_restart(self, name: str, finished: int) -> None:
        from saga_actors.actors.processes import ServiceFailed

        def abandoned() -> None:
            if self._done.is_set():  # the demo is stopping: give the restart up
                raise ServiceFailed(f"the {name} service was not restarted: the demo stopped", None)

        service = self.processes[name]
        with self.gate:
            killed = time.perf_counter()
            service.kill()  # SIGKILL: its requests in flight die with it
            try:
                service.restart(check=abandoned)
            except ServiceFailed as failed:
                self._failed = f"the {name} service, killed on purpose, could not be restarted: {failed}"
                return
            finally:
                self.killed = {
                    "service": name,
                    "killed": True,
                    "seconds_after_the_engine_started": round(killed - self._system_started, 3),
                    "orders_finished_before": finished,
                    "restarted": self._failed is None,
                    "seconds_down": round(time.perf_counter() - killed, 3),
                    "port": service.bound_port,
                }
            self.pids[name].append(service.pid or 0)

    def report(self) -> dict[str, Any]:
        """What the summary says of the services."""
        return {
            "mode": "processes",
            **{
                name: {
                    "url": service.url,
                    "pids": self.pids[name],
                    "journal": self.journals[name],
                    "actor_restarts": self.restarts[name],
                }
                for name, service in self.processes.items()
            },
            "kill": (self.killed or {"service": self.args.kill_service, "killed": False})
            if self.args.kill_service
            else None,
        }


class ServiceOrderSystem(OrderSystem):
    """An order system over the service processes whose views (the stock, the payments, the
    checks, a restock) wait while --kill-service has a service down on purpose: the summary
    reads the services once they are back, and a service is never killed in the middle of it."""

    def __init__(self, services: ServiceProcesses, **options: Any) -> None:
        super().__init__(**options)
        self._services = services

    def _viewing(self, view: Callable[[], Any]) -> Any:
        with self._services.gate:
            self._services.check_up()
            return view()

    def inventory(self) -> Any:
        return self._viewing(super().inventory)

    def payments(self) -> Any:
        return self._viewing(super().payments)

    def restock(self, stock: Any) -> None:
        restock = super().restock
        self._viewing(lambda: restock(stock))

    def check_consistency(self, initial_stock: Any = None) -> list[Check]:
        check = super().check_consistency
        return self._viewing(lambda: check(initial_stock))  # type: ignore[no-any-return]


_services: ServiceProcesses | None = None  # while the services run: build_system uses them


def over_service_processes(run: RunMode) -> RunMode:
    """`run` with the services as processes around it; the summary says what they did."""

    def running(
        args: argparse.Namespace, journal: str, out: IO[str], timeline: Timeline | None
    ) -> dict[str, Any]:
        global _services
        with ServiceProcesses(args, journal, out) as services:
            _services = services
            try:
                summary = run(args, journal, out, timeline)
            finally:
                _services = None
        summary["services"] = services.report()
        return summary

    return running


def print_services(services: dict[str, Any], w: Callable[[str], None]) -> None:
    w("\n== Services: two processes over HTTP ==\n")
    for name in SERVICES:
        s = services[name]
        pids = " -> ".join(str(pid) for pid in s["pids"])
        w(f"  {name:<9}  {s['url']}  pid {pids:<16}  actor restarts {s['actor_restarts']}\n")
    w("  (actor restarts: the simulated crashes, from the services' logs)\n")
    kill = services["kill"]
    if kill is not None and not kill["killed"]:
        w(f"  {kill['service']}: not killed, the run ended first\n")
    elif kill is not None:
        w(
            f"  {kill['service']}: SIGKILL {kill['seconds_after_the_engine_started']:.2f} s after the engine "
            f"started, {kill['orders_finished_before']} orders finished;\n"
        )
        if kill["restarted"]:
            down = kill["seconds_down"]
            w(f"    restarted on the same port and journal, listening again {down:.2f} s later\n")
        else:
            w("    not restarted\n")


def kill_and_recover(
    args: argparse.Namespace, journal: str, out: IO[str], timeline: Timeline | None
) -> dict[str, Any]:
    """Run the workload in a child, SIGKILL it part-way, recover on the same journal."""
    resumed = None
    if os.path.exists(journal):  # a kept journal: what an earlier run left is finished first
        with open_system(args, journal, None) as system:
            announce(args, journal, out)
            run = run_number(system)
            resumed = resume(system, args, out)
    else:
        announce(args, journal, out)
        run = 1
    # Its size for the progress line and the kill; the child says what it finds in the journal,
    # which sizes the orders larger than all stock (see make_workload).
    workload = make_workload(args, run)
    check_stop()
    kill_after = max(1, int(len(workload.requests) * random.Random(args.seed).uniform(0.3, 0.6)))
    # Its own process group: a Ctrl-C on the terminal reaches this process, which kills the child.
    child = subprocess.Popen(
        child_command(args, journal, run), stdout=subprocess.PIPE, text=True, process_group=0
    )
    reported: dict[str, bool] = {}
    answers = 0
    before: dict[int, dict[str, int]] = {}
    restocked: dict[int, int] = {}
    progress = Progress(len(workload.requests), out)
    assert child.stdout is not None
    try:
        for line in lines_until_stopped(child.stdout):
            if line.startswith("BEFORE "):
                found = json.loads(line[len("BEFORE ") :])
                before = {
                    int(p): {"on_hand": s[0], "reserved": s[1], "received": s[2]}
                    for p, s in found["stock"].items()
                }
                workload = make_workload(args, run, {p: s["received"] for p, s in before.items()})
                restocked = dict.fromkeys(workload.stock, found["restocked"]) if found["restocked"] else {}
            elif line.startswith("OUTCOME "):
                _, order_id, outcome, took, restarts = line.split()
                reported[order_id] = outcome == "1"
                answers += 1
                if timeline is not None:
                    timeline.record(float(took), int(restarts))
                progress.record(outcome == "1")
                if answers >= kill_after:
                    child.send_signal(signal.SIGKILL)
                    break
    finally:  # interrupted too: the child goes with this process
        if child.poll() is None:
            child.kill()
        status = child.wait()
        child.stdout.close()
    if answers < kill_after and status != 0:
        raise ChildFailed(
            status, f"the simulation's child process exited with status {status} before the kill"
        )
    progress.finish()
    if timeline is not None:
        timeline.kill = timeline.now()
    out.write(
        _fit(
            f"killed the child (SIGKILL) after {plural(answers, 'answered submission')} "
            f"({plural(len(reported), 'distinct order')}); recovering from {journal}\n"
        )
    )

    with open_system(args, journal, workload.stock) as system:
        found = recovered(system)
        out.write(_fit(recovery_line(found) + "\n"))
        settle(system, 60)
        mine = {r["order_id"] for r in workload.requests}
        known = mine & set(system.orders())  # this run's orders the journal holds
        out.write(
            _fit(
                "placing the whole workload again: orders placed before the kill are answered "
                "from the journal\n"
            )
        )
        if timeline is not None:
            timeline.recovered = timeline.now()
            timeline.new_system()
        progress = Progress(len(workload.requests), out)
        result = place_all(system, workload.requests, args.concurrency, progress, timeline=timeline)
        recovery = {
            "answers_before_kill": answers,
            "orders_reported_before_kill": len(reported),
            **found,
            "orders_in_journal_at_recovery": len(known),
            # The child finished what an earlier run left before it placed an order, so every
            # saga resumed and every order cancelled at recovery is this run's: the rest of the
            # orders placed before the kill had finished, and their outcome had not reached
            # this process (the child was killed before it wrote them, or they were not read).
            "orders_finished_before_kill_unreported": len(known)
            - len(reported)
            - found["sagas_resumed"]
            - found["orders_never_started"],
            "resubmissions_answered_from_journal": sum(
                1 for r in workload.requests if r["order_id"] in known
            ),
            "reported": reported,
        }
        return summarize(system, Scope(workload, before, restocked, result, resumed, recovery))


# --- the picture (--plot) ---

PLOT_FORMATS = (".png", ".svg", ".pdf")


def plot_problem(path: str) -> str | None:
    """Why `--plot path` cannot be drawn, found before the run; None if it can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"--plot needs matplotlib, which is not installed: {PLOT_EXTRA}"
    if os.path.splitext(path)[1].lower() not in PLOT_FORMATS:
        return f"--plot {path}: the file name must end in {', '.join(PLOT_FORMATS)}"
    problem = file_problem(path, "picture file")
    return None if problem is None else f"--plot {path}: {problem}"


def make_figure(timeline: Timeline, title: str) -> Figure:
    """Throughput (answers per second) and latency over the run; restarts, the kill and the
    recovery marked. matplotlib's Agg canvas: no display, no global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    answers = sorted(timeline.answers)
    end = max([t for t, _ in answers] + [timeline.kill or 0.0, timeline.recovered or 0.0, 1e-3])
    bins = max(1, min(60, len(answers) // 10))
    width = end / bins
    latencies: list[list[float]] = [[] for _ in range(bins)]
    for at, latency in answers:
        latencies[min(bins - 1, int(at / width))].append(latency)
    centers = [(i + 0.5) * width for i in range(bins)]

    figure = Figure(figsize=(10, 6), layout="constrained")
    FigureCanvasAgg(figure)
    rate_axes, latency_axes = figure.subplots(2, 1, sharex=True)
    rate_axes.bar(centers, [len(b) / width for b in latencies], width=width * 0.9, color="tab:blue")
    rate_axes.set_ylabel("submissions answered / s")
    if answers:
        latency_axes.scatter(
            [t for t, _ in answers],
            [1000 * latency for _, latency in answers],
            s=4,
            alpha=0.3,
            color="tab:gray",
            label="one submission",
        )
        filled = [i for i in range(bins) if latencies[i]]
        interval = f"{1000 * width:.0f} ms" if width < 1 else f"{width:.2g} s"
        for q, name, style in ((0.5, "median (p50)", "-"), (0.95, "95th percentile (p95)", "--")):
            latency_axes.plot(
                [centers[i] for i in filled],
                [1000 * percentile(latencies[i], q) for i in filled],
                style,
                color="black",
                label=f"{name} of each {interval} interval",
            )
        latency_axes.set_yscale("log")
    latency_axes.set_ylabel("latency (ms)")
    latency_axes.set_xlabel("seconds since the first order")
    for axes in (rate_axes, latency_axes):
        for n, at in enumerate(timeline.restarts):
            label = f"actor restart ({len(timeline.restarts)} in all)" if n == 0 else "_nolegend_"
            axes.axvline(at, color="tab:orange", linewidth=0.8, alpha=0.6, label=label)
        if timeline.kill is not None:
            axes.axvline(timeline.kill, color="red", linewidth=2, label="SIGKILL")
        if timeline.recovered is not None:
            axes.axvline(timeline.recovered, color="green", linestyle="--", label="recovered; placed again")
        if axes.get_legend_handles_labels()[0]:  # something to name
            axes.legend(loc="best", fontsize="small")
    figure.suptitle(title)
    return figure


def run_title(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    orders = summary["orders"]
    mode = ", killed and recovered" if args.kill_and_recover else ""
    return (
        f"demo.py: {plural(orders['submitted'], 'submission')} of "
        f"{plural(orders['distinct'], 'distinct order')}, {args.concurrency} customers, "
        f"failure rate {args.failure_rate}, crash rate {args.crash_rate}, seed {args.seed}{mode}"
    )


# --- main ---


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = None
    if args.journal is not None:
        problem = journal_problem(args.journal, otherwise="leave --journal out for a temporary journal")
    if problem is None and args.plot is not None and not args.child:
        problem = plot_problem(args.plot)
    problem = problem or services_problem(args)
    if problem is not None:
        return error(PROG, problem)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pykka").setLevel(logging.CRITICAL)  # simulated crashes are expected
    # SIGTERM stops the demo as Ctrl-C does, and so does a closed pipe (`| head`, quietly,
    # status 141): the system stops, the temporary journal is removed, the child is killed.
    return run_stoppable(STOP, lambda: _run(args), f"\n{PROG}: interrupted\n")


def _run(args: argparse.Namespace) -> int:
    out = sys.stderr if (args.json or args.child) else sys.stdout
    timeline = Timeline() if args.plot is not None and not args.child else None
    # A temporary folder only when no journal is given (a child always gets one: it is
    # SIGKILLed, and would leave its own folder behind).
    folder_or_none = tempfile.TemporaryDirectory(prefix="saga-demo-") if args.journal is None else None
    try:
        with folder_or_none or contextlib.nullcontext():
            journal = args.journal or os.path.join(folder_or_none.name, "journal.db")  # type: ignore[union-attr]
            run = kill_and_recover if args.kill_and_recover else simulate
            run = over_service_processes(run) if args.services == "processes" else run
            summary = run(args, journal, out, timeline)
            check_stop()
    except BadJournal as bad:
        return error(PROG, str(bad))
    except ChildFailed as failed:
        sys.stderr.write(f"{PROG}: {failed}\n")
        return failed.status
    if args.child:
        return 0
    summary["run"] = {
        "options": {k: v for k, v in vars(args).items() if k not in ("child", "run", "json")},
        "seed": args.seed,
        "journal": journal,
        "journal_kept": args.journal is not None,
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_summary(summary, out)
    if timeline is not None:
        try:
            make_figure(timeline, run_title(args, summary)).savefig(args.plot, dpi=100)
        except (OSError, ValueError) as failed:
            return error(PROG, f"--plot {args.plot}: not written: {failed}")
        out.write(f"plot: {args.plot}\n")
    return 0 if summary["ok"] else 1


def _fit(text: str, width: int = 79) -> str:
    """`text` with every line longer than `width` wrapped (indented under itself): nothing
    the demo prints wraps on an 80-column terminal."""
    lines = []
    for line in text.split("\n"):
        if len(line) <= width:
            lines.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()) + 4)
        lines.append(textwrap.fill(line, width, subsequent_indent=indent, break_on_hyphens=False))
    return "\n".join(lines)


# Ctrl-C or SIGTERM asks the run to stop; it stops at the next point that checks (the
# customers between two orders, the main thread while it waits for them or for the child).
# A second signal while stopping changes nothing: the journal is closed and the temporary
# folder removed all the same.
STOP = StopRequest()


def check_stop() -> None:
    """Stop here (KeyboardInterrupt, which main turns into exit status 128 + the signal)
    if a signal asked to."""
    STOP.check()


if __name__ == "__main__":
    sys.exit(main())
