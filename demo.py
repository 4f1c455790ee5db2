"""A concurrency simulation of the order engine, with the consistency checks at the end.

    python demo.py                      # ~1000 orders against flaky, slow, crashing services
    python demo.py --kill-and-recover   # ... killed with SIGKILL part-way, then recovered
    python demo.py --help

Many customers order from a small catalogue at once: some submit the same
order twice, some ask for more than is left, some pay with a declined card.
The services fail transiently, answer slowly and crash. At the end the demo
prints what happened and checks that nothing is half-done; it exits with
status 1 if a check fails (2 for bad options).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any

from saga_actors.actors import FaultPlan, JournalInUse, OrderSystem, RetryPolicy
from saga_actors.actors.consistency import Check

GOOD_CARDS = ("4242424242424242", "5555555555554444")
DECLINED_CARDS = ("4000000000000002", "4000000000009995")


# --- options ---


MAX_ORDERS = 1_000_000


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63-1, got {value}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _latency(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts) if len(parts) == 2 else (None, None)
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
    parser.add_argument("--seed", type=_seed, default=7, help="seeds the workload and the faults (default 7)")
    parser.add_argument(
        "--journal",
        metavar="PATH",
        help="keep the journal in PATH; running again on it continues from its state",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument(
        "--kill-and-recover",
        action="store_true",
        help="run the simulation in a child process, SIGKILL it part-way, then recover",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.failure_rate + args.crash_rate > 1.0:
        parser.error("--failure-rate plus --crash-rate must not exceed 1")
    if args.products > 1000 or args.concurrency > 1000:
        parser.error("--products and --concurrency are limited to 1000")
    if args.orders > MAX_ORDERS:
        parser.error(f"--orders is limited to {MAX_ORDERS:,}")
    return args


# --- the workload (the same seed gives the same workload) ---


@dataclass
class Workload:
    stock: dict[int, int]
    requests: list[dict[str, Any]]  # in submission order; duplicates repeat an earlier request


def make_workload(args: argparse.Namespace, run: int) -> Workload:
    rng = random.Random(args.seed)
    products = list(range(101, 101 + args.products))
    # An order wants ~4.4 units on average; stock covers about 70% of the demand,
    # so the orders that come late find some products sold out.
    per_product = 0.7 * 4.4 * args.orders / len(products)
    stock = {p: max(1, int(rng.uniform(0.6, 1.4) * per_product)) for p in products}
    prices = {p: Decimal(rng.randint(199, 4999)) / 100 for p in products}
    requests: list[dict[str, Any]] = []
    for i in range(args.orders):
        draw = rng.random()
        if requests and draw < 0.06:
            requests.append(rng.choice(requests[-50:]))  # a customer clicks "buy" twice
            continue
        chosen = rng.sample(products, k=min(len(products), rng.choice((1, 1, 2, 3))))
        items = [{"product_id": p, "quantity": rng.randint(1, 4)} for p in chosen]
        if draw > 0.97:
            items[0]["quantity"] = stock[chosen[0]] + rng.randint(1, 5)  # more than there ever was
        amount = sum(prices[item["product_id"]] * item["quantity"] for item in items)
        requests.append(
            {
                "user_id": rng.randint(1, 5000),
                "order_id": f"r{run}-{i:05d}",
                "items": items,
                "payment_info": {
                    "card_number": rng.choice(DECLINED_CARDS)
                    if rng.random() < 0.05
                    else rng.choice(GOOD_CARDS),
                    "expiry": "12/30",
                    "amount": str(amount),
                },
            }
        )
    return Workload(stock, requests)


def build_system(args: argparse.Namespace, journal: str, stock: dict[int, int] | None) -> OrderSystem:
    low, high = args.latency
    faults = {
        "failure_rate": args.failure_rate,
        "crash_rate": args.crash_rate,
        "min_latency": low,
        "max_latency": high,
    }
    return OrderSystem(
        journal_path=journal,
        stock=stock,
        inventory_faults=FaultPlan(**faults, seed=args.seed),
        payment_faults=FaultPlan(**faults, seed=args.seed + 1),
        retry=RetryPolicy(
            initial_interval=0.01, maximum_interval=0.25, maximum_attempts=6, attempt_timeout=0.5
        ),
    )


# --- progress ---


class Progress:
    """Live progress: one redrawn line on a terminal, plain periodic lines otherwise."""

    def __init__(self, total: int, stream: IO[str], quiet: bool = False) -> None:
        self.total, self.stream, self.quiet = total, stream, quiet
        self.tty = stream.isatty()
        self.done = self.confirmed = self.cancelled = 0
        self.started = time.perf_counter()
        self._last = 0.0
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
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        if self.quiet:
            return
        rate = self.done / max(now - self.started, 1e-9)
        stats = (
            f" {self.done}/{self.total} answered  confirmed {self.confirmed}"
            f"  cancelled {self.cancelled}  {rate:.0f}/s"
        )
        columns = shutil.get_terminal_size((80, 24)).columns if self.tty else 80
        width = max(0, min(24, columns - 1 - len(stats) - 2))  # the bar gives way first
        filled = int(width * self.done / self.total)
        text = (f"[{'#' * filled}{'.' * (width - filled)}]" if width else "") + stats
        if self.tty:
            text = text[: max(columns - 1, 1)]  # a redrawn line must never wrap
            self.stream.write("\r" + text + "\x1b[K")  # clear what a longer line left
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# --- running ---


@dataclass
class RunResult:
    outcomes: dict[str, bool] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0


def place_all(
    system: OrderSystem,
    requests: list[dict[str, Any]],
    concurrency: int,
    progress: Progress,
    report: IO[str] | None = None,
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
        with lock:
            result.latencies.append(took)
            if outcome is not None:
                result.outcomes[request["order_id"]] = outcome
                if report is not None:
                    report.write(f"OUTCOME {request['order_id']} {int(outcome)}\n")
                    report.flush()
        progress.record(outcome)

    started = time.perf_counter()
    pool = ThreadPoolExecutor(concurrency)
    try:
        list(pool.map(place, requests))
    finally:  # interrupted: do not place the orders not yet started
        pool.shutdown(wait=True, cancel_futures=True)
    result.elapsed = time.perf_counter() - started
    progress.finish()
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def next_run(args: argparse.Namespace, journal: str) -> int:
    """Order ids are "r<run>-<n>": a run on a kept journal continues with fresh ids."""
    if not os.path.exists(journal):
        return 1
    with build_system(args, journal, None) as system:
        prefixes = {order_id.split("-", 1)[0] for order_id in system.orders()}
    return 1 + max((int(p[1:]) for p in prefixes if p[:1] == "r" and p[1:].isdigit()), default=0)


# --- the summary ---


def summarize(
    system: OrderSystem,
    stock_before: dict[int, Any],
    result: RunResult | None,
    workload: Workload,
    recovery: dict[str, Any] | None = None,
) -> dict[str, Any]:
    system.wait_idle(60)
    in_flight = system.metrics()["in_flight"]
    orders = system.orders()
    inventory = system.inventory()
    payments = system.payments()
    metrics = system.metrics()
    checks = system.check_consistency()
    if recovery is not None and "reported" in recovery:
        changed = sorted(
            o
            for o, ok in recovery["reported"].items()
            if orders[o].state != ("confirmed" if ok else "cancelled")
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
    all_orders = orders
    mine = {r["order_id"] for r in workload.requests}
    orders = {o: v for o, v in all_orders.items() if o in mine}  # this run's (checks cover all)
    reasons = Counter(v.reason for v in orders.values() if v.state == "cancelled")
    captured = [p for p in payments.values() if p.state == "captured"]
    voided = [p for p in payments.values() if p.state == "voided"]
    summary: dict[str, Any] = {
        "orders": {
            "submitted": len(workload.requests),
            "distinct": len({r["order_id"] for r in workload.requests}),
            "confirmed": sum(1 for v in orders.values() if v.state == "confirmed"),
            "cancelled": sum(1 for v in orders.values() if v.state == "cancelled"),
            "pending": sum(1 for v in orders.values() if v.state == "pending"),
            "cancelled_by_reason": dict(reasons.most_common()),
            "duplicates_answered_from_first_outcome": metrics["duplicates"],
            "in_journal": len(all_orders),
            "in_flight": in_flight,
        },
        "activity": {k: metrics[k] for k in ("retries", "compensations", "restarts")},
        "stock": {
            str(p): {
                "before_on_hand": stock_before.get(p, {}).get("on_hand", 0),
                "before_reserved": stock_before.get(p, {}).get("reserved", 0),
                "on_hand": v.on_hand,
                "reserved": v.reserved,
            }
            for p, v in inventory.items()
        },
        "payments": {
            "captured": len(captured),
            "captured_total": str(sum((p.amount for p in captured), Decimal(0))),
            "voided": len(voided),
            "voided_total": str(sum((p.amount for p in voided), Decimal(0))),
        },
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        "ok": all(c.ok for c in checks),
    }
    if result is not None and result.latencies:
        summary["performance"] = {
            "seconds": round(result.elapsed, 3),
            "orders_per_second": round(len(result.latencies) / result.elapsed, 1),
            "latency_ms": {
                q: round(1000 * percentile(result.latencies, v), 1)
                for q, v in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
            },
            "errors": dict(result.errors),
        }
    if recovery is not None:
        summary["recovery"] = {k: v for k, v in recovery.items() if k != "reported"}
    return summary


def print_summary(summary: dict[str, Any], out: IO[str]) -> None:
    o = summary["orders"]

    def w(text: str) -> None:
        out.write(_fit(text))

    w("\n== Orders ==\n")
    w(f"  {o['submitted']} submissions of {o['distinct']} distinct orders\n")
    w(f"  distinct orders: confirmed {o['confirmed']}, cancelled {o['cancelled']}, pending {o['pending']}\n")
    if o["in_journal"] != o["distinct"]:
        w(f"  (the journal holds {o['in_journal']} orders in all; the checks cover every one)\n")
    for reason, count in o["cancelled_by_reason"].items():
        w(f"    cancelled: {reason:<20} {count}\n")
    w(f"  duplicates answered from the first outcome: {o['duplicates_answered_from_first_outcome']}\n")
    a = summary["activity"]
    w(f"  retries {a['retries']}, compensations {a['compensations']}, actor restarts {a['restarts']}\n")
    if "recovery" in summary:
        r = summary["recovery"]
        w("\n== Recovery after SIGKILL ==\n")
        w(f"  child killed after {r['reported_before_kill']} outcomes\n")
        w(
            f"  sagas resumed {r['sagas_resumed']}: rolled forward {r['rolled_forward']}, "
            f"rolled back {r['rolled_back']}; orders whose saga never began {r['orders_never_started']}\n"
        )
    if "performance" in summary:
        p = summary["performance"]
        lat = p["latency_ms"]
        w("\n== Performance ==\n")
        w(
            f"  {p['orders_per_second']} orders/s over {p['seconds']} s; latency p50 {lat['p50']} ms, "
            f"p95 {lat['p95']} ms, p99 {lat['p99']} ms\n"
        )
        if p["errors"]:
            w(f"  errors: {p['errors']}\n")
    w("\n== Stock ==   before (on hand, reserved) -> after (on hand, reserved)\n")
    for product, s in summary["stock"].items():
        w(
            f"  product {product}: {s['before_on_hand']:5d} {s['before_reserved']:3d}  ->  "
            f"{s['on_hand']:5d} {s['reserved']:3d}\n"
        )
    pay = summary["payments"]
    w("\n== Payments ==\n")
    w(
        f"  captured {pay['captured']} ({pay['captured_total']}),"
        f" voided {pay['voided']} ({pay['voided_total']})\n"
    )
    w("\n== Consistency checks ==\n")
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


def simulate(args: argparse.Namespace, journal: str, out: IO[str]) -> dict[str, Any]:
    """Run the workload on `journal` in this process."""
    workload = make_workload(args, args.run or next_run(args, journal))
    system = build_system(args, journal, workload.stock)
    with system:
        before = {p: {"on_hand": v.on_hand, "reserved": v.reserved} for p, v in system.inventory().items()}
        progress = Progress(len(workload.requests), out, quiet=args.child)
        result = place_all(
            system, workload.requests, args.concurrency, progress, report=sys.stdout if args.child else None
        )
        return summarize(system, before, result, workload)


def kill_and_recover(args: argparse.Namespace, journal: str, out: IO[str]) -> dict[str, Any]:
    """Run the workload in a child, SIGKILL it part-way, recover on the same journal."""
    run = next_run(args, journal)
    workload = make_workload(args, run)
    kill_after = max(1, int(len(workload.requests) * random.Random(args.seed).uniform(0.3, 0.6)))
    child_args = [a for a in args.argv if a not in ("--kill-and-recover", "--json")]
    if args.journal is None:
        child_args += ["--journal", journal]
    command = [sys.executable, os.path.abspath(__file__), *child_args, "--child", "--run", str(run)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    reported: dict[str, bool] = {}
    progress = Progress(len(workload.requests), out)
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("OUTCOME"):
            _, order_id, outcome = line.split()
            reported[order_id] = outcome == "1"
            progress.record(outcome == "1")
            if len(reported) >= kill_after:
                break
    child.send_signal(signal.SIGKILL)
    child.wait()
    progress.finish()
    out.write(
        _fit(
            f"killed the child (SIGKILL) after {len(reported)} reported outcomes; recovering from {journal}\n"
        )
    )

    system = build_system(args, journal, workload.stock)
    with system:
        report = system.recovery()
        out.write(
            _fit(
                f"recovery: {report.sagas_resumed} sagas resumed ({report.rolled_forward} rolled forward, "
                f"{report.rolled_back} rolled back); orders whose saga never began: "
                f"{report.orders_never_started}\n"
            )
        )
        system.wait_idle(60)
        before = {p: {"on_hand": v.received, "reserved": 0} for p, v in system.inventory().items()}
        out.write(_fit("placing the whole workload again: finished orders are answered from the journal\n"))
        progress = Progress(len(workload.requests), out)
        result = place_all(system, workload.requests, args.concurrency, progress)
        recovery = {
            "reported_before_kill": len(reported),
            "sagas_resumed": report.sagas_resumed,
            "rolled_forward": report.rolled_forward,
            "rolled_back": report.rolled_back,
            "orders_never_started": report.orders_never_started,
            "reported": reported,
        }
        return summarize(system, before, result, workload, recovery)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pykka").setLevel(logging.CRITICAL)  # simulated crashes are expected
    out = sys.stderr if (args.json or args.child) else sys.stdout
    # SIGTERM stops the demo as Ctrl-C does: the system stops, the temporary journal is removed.
    signal.signal(signal.SIGTERM, _interrupted)
    # A temporary folder only when no journal is given (a child always gets one: it is
    # SIGKILLed, and would leave its own folder behind).
    folder_or_none = tempfile.TemporaryDirectory(prefix="saga-demo-") if args.journal is None else None
    try:
        with folder_or_none or contextlib.nullcontext():
            journal = args.journal or os.path.join(folder_or_none.name, "journal.db")  # type: ignore[union-attr]
            if not args.child:
                out.write(f"journal: {journal}{'' if args.journal else ' (temporary)'}\n")
            run = kill_and_recover if args.kill_and_recover else simulate
            summary = run(args, journal, out)
            summary["run"] = {
                "options": {k: v for k, v in vars(args).items() if k not in ("argv", "child", "run", "json")},
                "seed": args.seed,
                "journal": journal,
                "journal_kept": args.journal is not None,
            }
    except JournalInUse as in_use:
        sys.stderr.write(f"demo.py: {in_use}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("\ndemo.py: interrupted\n")
        return 130
    if args.child:
        return 0
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_summary(summary, out)
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


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
