"""The `saga-actors` command (also `python -m saga_actors`).

    saga-actors serve inventory --port 0 --journal inventory.db --stock 101=10,102=5
    saga-actors serve payment --port 8002 --journal payment.db --token-file token

`serve` runs one participant - the inventory or the payment - as a service
process behind HTTP/JSON (the protocol of `saga_actors.actors.wire`). Once it
listens it prints one line to stdout, `saga-actors <service> listening on
http://HOST:PORT`, and logs to stderr. SIGTERM (or Ctrl-C) stops it cleanly:
it stops accepting, answers the requests in flight, stops its actor and
closes its journal, and exits 0.

Exit statuses: 0 stopped by a signal; 1 the service failed while running
(its supervision tree gave up); 2 it could not start as asked - a bad
option, no access token, a journal it cannot use, a port it cannot listen
on, a missing optional library - said in one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import NoReturn

from saga_actors._cli import number, whole_number
from saga_actors.sagas.metrics import Metrics
from saga_actors.sagas.prometheus import MetricsEndpoint

__all__ = ["main"]

TOKEN_VARIABLE = "SAGA_ACTORS_TOKEN"
HTTP_EXTRA = "pip install 'saga-actors[http]'"
USAGE_ERROR = 2

logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option said in one line (not the usage) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message}\n")


class _Unusable(Exception):
    """The command cannot run as asked; the message is one line for the user (exit status 2)."""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="saga-actors",
        description="Sagas on pykka actors: run a participant as a service process.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the inventory or the payment service behind HTTP/JSON",
        description=(
            "Run the inventory or the payment service as a process of its own, behind HTTP/JSON. "
            f"Every request needs 'Authorization: Bearer <token>': the token is read from "
            f"{TOKEN_VARIABLE} or --token-file, and the service refuses to start without one. "
            "Once listening it prints 'saga-actors SERVICE listening on http://HOST:PORT'. "
            "SIGTERM stops it cleanly (exit 0)."
        ),
    )
    serve.add_argument("service", choices=("inventory", "payment"), help="which service")
    serve.add_argument(
        "--port", type=whole_number, required=True, help="port to listen on (0: any free port)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--journal", required=True, metavar="FILE", help="the service's SQLite journal")
    serve.add_argument(
        "--stock",
        metavar="ID=UNITS,...",
        help="inventory only: stock to start with, e.g. 101=10,102=5, if the journal is empty",
    )
    serve.add_argument("--failure-rate", type=number, default=0.0, metavar="R", help="simulated: refused (0)")
    serve.add_argument("--crash-rate", type=number, default=0.0, metavar="R", help="simulated: crashes (0)")
    serve.add_argument(
        "--latency",
        metavar="MIN,MAX",
        help="simulated: seconds on the wire before a request reaches the actor",
    )
    serve.add_argument("--seed", type=whole_number, help="seeds the simulated faults (random when left out)")
    serve.add_argument(
        "--token-file", metavar="FILE", help=f"read the access token from FILE, not {TOKEN_VARIABLE}"
    )
    serve.add_argument(
        "--request-timeout",
        type=number,
        default=5.0,
        metavar="S",
        help="seconds the actor may take to answer a command before the answer is 504 (5)",
    )
    serve.add_argument(
        "--max-connections",
        type=whole_number,
        default=1000,
        metavar="N",
        help="open connections at once; more are closed as they come (1000)",
    )
    serve.add_argument(
        "--metrics-port", type=whole_number, metavar="P", help="serve Prometheus metrics on this port"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    try:
        return _serve(args)
    except _Unusable as unusable:
        print(f"saga-actors serve: {unusable}", file=sys.stderr, flush=True)
        return USAGE_ERROR
    except KeyboardInterrupt:  # Ctrl-C before it listened (it stops cleanly once listening)
        return 130


def _serve(args: argparse.Namespace) -> int:
    from saga_actors.persistence.journal import JournalCorrupted, JournalInUse
    from saga_actors.sagas.simulation import FaultPlan

    stock = _stock(args.stock) if args.stock is not None else None
    if stock is not None and args.service != "inventory":
        raise _Unusable("--stock is for the inventory service only")
    for name in ("port", "metrics_port"):
        port = getattr(args, name)
        if port is not None and not 0 <= port <= 65535:
            raise _Unusable(
                f"--{name.replace('_', '-')} must be in [0, 65535] (0: any free port), got {port}"
            )
    if not args.host:
        raise _Unusable("--host must not be empty")
    if not (math.isfinite(args.request_timeout) and 0 < args.request_timeout <= 3600):
        raise _Unusable(
            f"--request-timeout must be a number of seconds in (0, 3600], got {args.request_timeout}"
        )
    if not 1 <= args.max_connections <= 1_000_000:
        raise _Unusable(f"--max-connections must be from 1 to 1000000, got {args.max_connections}")
    low, high = _latency(args.latency) if args.latency is not None else (0.0, 0.0)
    try:
        faults = FaultPlan(
            failure_rate=args.failure_rate,
            crash_rate=args.crash_rate,
            min_latency=low,
            max_latency=high,
            seed=args.seed,
        )
    except ValueError as invalid:
        raise _Unusable(str(invalid)) from None
    _check_journal_path(args.journal)
    try:
        from saga_actors.actors.server import run_server, server_metrics
    except ImportError as missing:
        if missing.name != "aiohttp":
            raise
        raise _Unusable(
            f"the service needs the aiohttp library, which is not installed: {HTTP_EXTRA}"
        ) from None
    token = _token(args.token_file)
    metrics = server_metrics()
    endpoint = (
        _metrics_endpoint(metrics, args.host, args.metrics_port) if args.metrics_port is not None else None
    )

    from saga_actors.actors.service import ServiceNode

    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pykka").addFilter(_not_simulated)  # the supervisor logs each crash in one line
    node = ServiceNode(args.service, args.journal, stock=stock, faults=faults, metrics=metrics)
    try:
        node.start()
    except JournalInUse as in_use:
        raise _Unusable(f"--journal {args.journal}: {in_use}") from None
    except JournalCorrupted as corrupted:  # NotAJournal included
        raise _Unusable(f"--journal {args.journal}: {corrupted}") from None
    except (OSError, sqlite3.Error) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise _Unusable(f"--journal {args.journal}: cannot be opened: {reason}") from None
    logger.info("%s service started on journal %s", args.service, args.journal)
    try:
        if endpoint is not None:
            _start_metrics(endpoint, args.metrics_port)
        return asyncio.run(
            run_server(
                node,
                token,
                host=args.host,
                port=args.port,
                request_timeout=args.request_timeout,
                max_latency=high,
                metrics=metrics,
                max_connections=args.max_connections,
                ready=_announce,
            )
        )
    except OSError as error:  # cannot listen (the port is taken, the host unknown)
        raise _Unusable(f"cannot listen on {args.host} port {args.port}: {error.strerror or error}") from None
    finally:
        if endpoint is not None:
            endpoint.stop()
        node.stop()
        logger.info("%s service stopped", args.service)


def _not_simulated(record: logging.LogRecord) -> bool:
    """Whether a record is worth logging: not pykka's traceback of a crash simulated on purpose."""
    from saga_actors.sagas.simulation import SimulatedCrash

    return not (record.exc_info and isinstance(record.exc_info[1], SimulatedCrash))


def _announce(line: str) -> None:
    print(line, flush=True)


def _stock(text: str) -> dict[int, int]:
    stock: dict[int, int] = {}
    for part in text.split(","):
        product, _, units = part.partition("=")
        try:
            product_id, quantity = whole_number(product.strip()), whole_number(units.strip())
        except ValueError:
            raise _Unusable(f"--stock: {part.strip()[:40]!r} is not PRODUCT_ID=UNITS") from None
        if product_id < 0 or quantity < 0 or product_id >= 2**63 or quantity >= 2**63:
            raise _Unusable(f"--stock: {part.strip()[:40]!r}: ids and units must be non-negative integers")
        if product_id in stock:
            raise _Unusable(f"--stock: product {product_id} is given twice")
        stock[product_id] = quantity
    return stock


def _latency(text: str) -> tuple[float, float]:
    low, comma, high = text.partition(",")
    try:
        if not comma:
            raise ValueError
        return number(low.strip()), number(high.strip())
    except ValueError:
        raise _Unusable(f"--latency must be MIN,MAX in seconds, e.g. 0.001,0.02, got {text[:40]!r}") from None


def _check_journal_path(path: str) -> None:
    if not path:
        raise _Unusable("--journal: an empty path; give the journal's file path")
    if os.path.isdir(path):
        raise _Unusable(f"--journal {path}: a directory, not a journal file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        # A mistyped path must not quietly become a new, empty journal in a new folder.
        raise _Unusable(f"--journal {path}: its folder {folder} does not exist")


def _token(token_file: str | None) -> str:
    """The access token: the file's content, stripped, else the environment variable's."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise _Unusable(f"--token-file {token_file}: cannot be read: {reason}") from None
        if not token:
            raise _Unusable(f"--token-file {token_file}: empty; the service refuses to start without a token")
        return token
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise _Unusable(
            f"no access token: set {TOKEN_VARIABLE} or give --token-file FILE "
            "(the service refuses to start without one)"
        )
    return token


def _start_metrics(endpoint: MetricsEndpoint, port: int) -> None:
    try:
        endpoint.start()
    except OSError as error:
        raise _Unusable(f"--metrics-port {port}: cannot listen: {error.strerror or error}") from None
    logger.info("metrics on port %d", endpoint.port)  # the tests read it here


def _metrics_endpoint(metrics: Metrics, host: str, port: int) -> MetricsEndpoint:
    try:
        return MetricsEndpoint(metrics, host=host, port=port)
    except ImportError:
        raise _Unusable(
            "--metrics-port needs the prometheus_client library, which is not installed: "
            "pip install 'saga-actors[metrics]'"
        ) from None
