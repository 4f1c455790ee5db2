"""The `saga-actors` command (also `python -m saga_actors`).

    saga-actors serve inventory --port 0 --journal inventory.db --stock 101=10,102=5
    saga-actors serve payment --port 8002 --journal payment.db --token-file token
    saga-actors node --port 8080 --journal orders.db --stock 101=10,102=5

`serve` runs one participant - the inventory or the payment - as a service
process behind HTTP/JSON (the protocol of `saga_actors.actors.wire`). Once it
listens it prints one line to stdout, `saga-actors <service> listening on
http://HOST:PORT`, and logs to stderr. SIGTERM (or Ctrl-C) stops it cleanly:
it stops accepting, answers the requests in flight, stops its actor and
closes its journal, and exits 0.

`node` runs an `OrderSystem` behind HTTP/JSON (`saga_actors.actors.node_server`): `POST
/orders` places an order and answers its outcome, `GET /orders/<id>` its view, `GET /health`
says whether it takes orders - so that a load balancer can sit in front of several nodes. Its
readiness line is `saga-actors node listening on http://HOST:PORT (journal J)`, with the node
id when it has one, and the journal's password (in a URL) never shown. SIGTERM drains it:
new orders are refused, those in flight answered, the system stopped; exit 0 (Ctrl-C: 130).

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
from typing import Any, NoReturn

from saga_actors._cli import journal_problem, number, open_problem, printable, whole_number, without_password
from saga_actors.persistence.lease import check_lease_seconds, check_node_id
from saga_actors.sagas.metrics import Metrics
from saga_actors.sagas.prometheus import MetricsEndpoint
from saga_actors.sagas.runtime import is_postgres_url

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
        description="Sagas on pykka actors: run a participant as a service process, or an order node.",
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
        "--request-timeout",
        type=number,
        default=5.0,
        metavar="S",
        help="seconds the actor may take to answer a command before the answer is 504 (5)",
    )
    _server_options(serve)
    serve.add_argument(
        "--metrics-port", type=whole_number, metavar="P", help="serve Prometheus metrics on this port"
    )
    _node_parser(commands)
    return parser


def _server_options(command: argparse.ArgumentParser) -> None:
    """The options `serve` and `node` share: the token's file and the connection cap."""
    command.add_argument(
        "--token-file", metavar="FILE", help=f"read the access token from FILE, not {TOKEN_VARIABLE}"
    )
    command.add_argument(
        "--max-connections",
        type=whole_number,
        default=1000,
        metavar="N",
        help="open connections at once; more are closed as they come (1000)",
    )


def _check_listening(args: argparse.Namespace) -> None:
    """The checks `serve` and `node` share: ports, host, connection cap; _Unusable naming the first."""
    for name in ("port", "metrics_port"):
        port = getattr(args, name)
        if port is not None and not 0 <= port <= 65535:
            raise _Unusable(
                f"--{name.replace('_', '-')} must be in [0, 65535] (0: any free port), got {port}"
            )
    if not args.host:
        raise _Unusable("--host must not be empty")
    if not 1 <= args.max_connections <= 1_000_000:
        raise _Unusable(f"--max-connections must be from 1 to 1000000, got {args.max_connections}")


def _node_parser(commands: argparse._SubParsersAction[Any]) -> None:
    node = commands.add_parser(
        "node",
        help="run an order system behind HTTP/JSON (POST /orders, GET /orders/ID, GET /health)",
        description=(
            "Run an order system (OrderSystem) that takes orders over HTTP/JSON: POST /orders, "
            "GET /orders/ID, GET /health. Every request but GET /health needs 'Authorization: "
            f"Bearer <token>': the token is read from {TOKEN_VARIABLE} or --token-file (and sent to "
            "the --inventory and --payment services too); the node refuses to start without one. "
            "Once listening it prints 'saga-actors node listening on http://HOST:PORT (...)'. "
            "SIGTERM drains it (exit 0)."
        ),
    )
    node.add_argument(
        "--journal",
        required=True,
        metavar="J",
        help="the orders' journal: a SQLite file path, or a postgresql:// URL (cluster mode)",
    )
    node.add_argument("--port", type=whole_number, required=True, help="port to listen on (0: any free port)")
    node.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    node.add_argument("--node-id", metavar="N", help="this node's id in a cluster (a PostgreSQL journal)")
    node.add_argument("--lease", type=number, metavar="SECONDS", help="cluster mode: the node's lease")
    node.add_argument("--inventory", metavar="URL", help="the inventory service's URL (else in-process)")
    node.add_argument("--payment", metavar="URL", help="the payment service's URL (else in-process)")
    node.add_argument(
        "--stock",
        metavar="ID=UNITS,...",
        help="in-process inventory only: stock to start with, e.g. 101=10,102=5, if the journal is empty",
    )
    _server_options(node)
    node.add_argument(
        "--metrics-port", type=whole_number, metavar="P", help="serve the order system's Prometheus metrics"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command not in ("serve", "node"):
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    try:
        return _serve(args) if args.command == "serve" else _node(args)
    except _Unusable as unusable:
        print(f"saga-actors {args.command}: {unusable}", file=sys.stderr, flush=True)
        return USAGE_ERROR
    except KeyboardInterrupt:  # Ctrl-C before it listened (it stops cleanly once listening)
        return 130


def _serve(args: argparse.Namespace) -> int:
    from saga_actors.persistence.journal import JournalCorrupted, JournalInUse
    from saga_actors.sagas.simulation import FaultPlan

    stock = _stock(args.stock) if args.stock is not None else None
    if stock is not None and args.service != "inventory":
        raise _Unusable("--stock is for the inventory service only")
    _check_listening(args)
    if not (math.isfinite(args.request_timeout) and 0 < args.request_timeout <= 3600):
        raise _Unusable(
            f"--request-timeout must be a number of seconds in (0, 3600], got {args.request_timeout}"
        )
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


def _node(args: argparse.Namespace) -> int:
    """`saga-actors node`: check every option, start the order system, serve it until a signal."""
    from saga_actors.actors.system import OrderSystem
    from saga_actors.persistence.journal import JournalCorrupted, JournalInUse

    shown = without_password(args.journal)
    options = _node_options(args)
    try:
        from saga_actors.actors.node_server import run_node
    except ImportError as missing:
        if missing.name not in ("aiohttp", "multidict"):
            raise
        raise _Unusable(f"the node needs the aiohttp library, which is not installed: {HTTP_EXTRA}") from None
    token = _token(args.token_file)
    if args.inventory is not None or args.payment is not None:
        options["service_token"] = token
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pykka").addFilter(_not_simulated)
    if shown != args.journal:  # whoever logs the journal's URL (the order system does), not its password
        for handler in logging.getLogger().handlers:
            handler.addFilter(_Hiding(args.journal, shown))
    try:
        system = OrderSystem(journal=args.journal, **options)
    except (ValueError, ImportError) as invalid:
        raise _Unusable(_hide(str(invalid), args.journal, shown)) from None
    try:
        system.start()
    except Exception as failed:
        problem = open_problem(args.journal, failed) if shown == args.journal else None
        if problem is None:  # the error names the journal already (without its password): say it once
            reason = " ".join(str(failed).split())  # one line: libpq's hints come on lines of their own
            named = isinstance(failed, (ConnectionError, JournalInUse, JournalCorrupted))
            problem = reason if named else f"--journal {shown}: {reason}"
        raise _Unusable(_hide(problem, args.journal, shown)) from None
    where = f"node {printable(args.node_id)}, " if args.node_id is not None else ""
    try:
        return asyncio.run(
            run_node(
                system,
                token,
                host=args.host,
                port=args.port,
                max_connections=args.max_connections,
                ready=lambda url: _announce(f"saga-actors node listening on {url} ({where}journal {shown})"),
            )
        )
    except OSError as error:  # cannot listen (the port is taken, the host unknown)
        raise _Unusable(f"cannot listen on {args.host} port {args.port}: {error.strerror or error}") from None
    finally:
        system.stop()
        logger.info("node stopped")


def _node_options(args: argparse.Namespace) -> dict[str, Any]:
    """The OrderSystem's arguments from the node's options (but the journal and the token);
    _Unusable naming the first problem."""
    if args.journal.startswith(("postgresql://", "postgres://")):
        import importlib.util

        # Without the PostgreSQL journal, the URL would be taken for a file path and made one.
        if importlib.util.find_spec("saga_actors.persistence.postgres") is None:
            raise _Unusable(
                f"--journal {without_password(args.journal)}: this saga-actors has no PostgreSQL journal"
            )
    elif problem := journal_problem(args.journal, otherwise="give a postgresql:// URL"):
        raise _Unusable(problem)
    _check_listening(args)
    options: dict[str, Any] = {}
    if args.stock is not None:
        if args.inventory is not None:
            raise _Unusable(
                "--stock is for an in-process inventory: the stock belongs to the --inventory service"
            )
        options["stock"] = _stock(args.stock)
    for name in ("inventory", "payment"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.metrics_port is not None:
        options.update(metrics_port=args.metrics_port, metrics_host=args.host)
    if args.lease is not None and args.node_id is None:
        raise _Unusable("--lease is for a node of a cluster: give --node-id too")
    if args.node_id is not None:
        problems = check_node_id(args.node_id)
        if args.lease is not None:
            problems += check_lease_seconds(args.lease, "--lease")
        if args.inventory is None or args.payment is None or not is_postgres_url(args.journal):
            problems.append(
                "--node-id (a node of a cluster) needs a postgresql:// --journal and the --inventory "
                "and --payment services' URLs"
            )
        if problems:
            raise _Unusable("; ".join(problems).replace("node_id", "--node-id"))
        options["node_id"] = args.node_id
    if args.lease is not None:
        options["lease"] = args.lease
    return options


class _Hiding(logging.Filter):
    """Shows `secret` (the journal's URL with its password) as `shown` in every record logged."""

    def __init__(self, secret: str, shown: str) -> None:
        super().__init__()
        self._secret, self._shown = secret, shown

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._secret in message:
            record.msg, record.args = message.replace(self._secret, self._shown), ()
        return True


def _hide(message: str, journal: str, shown: str) -> str:
    """`message` with the journal's URL, if it holds one, as it may be shown (no password)."""
    return message.replace(journal, shown) if journal != shown else message


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
