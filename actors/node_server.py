"""The HTTP/JSON face of an `OrderSystem`: what `saga-actors node` serves, on aiohttp.

    POST /orders[?timeout=S]   body: the request `OrderSystem.place_order` takes (JSON)
    GET  /orders/<order_id>    the order's view
    GET  /health               200 while the node takes orders (no token: for load balancers)

Answers (JSON; amounts are decimal strings):

- 200 `{"order_id": str, "confirmed": bool}`: the order's outcome (a repeat of an order
  gets the first outcome; `confirmed` false is a rollback, its reason in the order's view).
- 422 `{"error": "invalid order", "problems": [...]}`: each problem named (`InvalidOrder`:
  card numbers and CVVs never quoted); nothing was placed.
- 409 `{"error": "idempotency conflict", "order_id": str}`: the order id was used for
  another order.
- 504 `{"order_id": str, "error": "outcome not known in time"}`: the order was accepted and
  carries on; ask `GET /orders/<order_id>`, or send the same request again.
- 503 `{"error": "node not running"}` (nothing was placed) or `{"error": "node stopping",
  "order_id": str}` (accepted, outcome unknown: the node stopped first); send the same request
  again, here or to another node - the order id makes it safe.
- 400 (not JSON, a bad `timeout`), 401, 404, 405, 413: `{"error": str, "problems"?: [...]}`,
  before anything is placed.

Threads. One event loop serves every connection; `OrderSystem.submit` (validation, then a
tell) runs in it and does not block. Waiting for an outcome cannot run there: an
`OrderFuture` (a pykka future) offers no completion callback, only a blocking `get`. So a
bounded pool of waiter threads (`WAITERS`) blocks in `get`, one order each, and hands the
outcome back to the loop. It is not a thread per request: past `WAITERS` orders in flight, the
others queue for a waiter, each still answered by its own deadline (a 504 at worst); the
threads are made only as concurrency needs them. Views are blocking asks too, from a pool of
their own (`VIEW_THREADS`), so that waiting orders never hold up a view.

Nothing of a request is logged (no access log; a request that is not HTTP is answered and
logged without its bytes), nor the token; a card number is never quoted in an answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import re
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from saga_actors.actors.errors import IdempotencyConflict, InvalidOrder, SystemNotRunning, mask_digits
from saga_actors.actors.http_common import (
    DEFAULT_MAX_CONNECTIONS,
    BodyRefused,
    as_bytes,
    read_json_body,
    serve_until,
    token_matches,
)
from saga_actors.actors.orders import OrderView
from saga_actors.actors.system import OrderFuture, OrderSystem
from saga_actors.actors.validation import check_order_id
from saga_actors.actors.wire import MAX_BODY

__all__ = [
    "DEFAULT_ORDER_TIMEOUT",
    "DRAIN_SECONDS",
    "MAX_ORDER_TIMEOUT",
    "WAITERS",
    "make_node_app",
    "order_view_to_json",
    "run_node",
]

logger = logging.getLogger(__name__)

DEFAULT_ORDER_TIMEOUT = 10.0  # seconds POST /orders waits for an outcome without ?timeout=
MAX_ORDER_TIMEOUT = 300.0  # the longest ?timeout= taken, in seconds
WAITERS = 64  # threads at most waiting for orders' outcomes (made as needed)
VIEW_THREADS = 2  # threads asking for orders' views
DRAIN_SECONDS = 10.0  # at SIGTERM, orders in flight wait this long for their outcome, then 504
DRAIN_MARGIN = 1.0  # seconds more for the last answers to be written
HEALTH_EVERY = 0.5  # seconds between looks at whether the order system still runs
_HAND_BACK = 0.25  # seconds past an order's deadline a waiter may take to hand its answer back

_TIMEOUT = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Answer(Exception):
    """An answer other than 200, made where the problem is found: its status and JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("error"))
        self.status = status
        self.body = body


def order_view_to_json(view: OrderView) -> dict[str, Any]:
    """`{"order_id", "state", "reason", "amount": "19.98", "items": [{"product_id", "quantity"}]}`."""
    return {
        "order_id": view.order_id,
        "state": view.state,
        "reason": view.reason,
        "amount": str(view.amount),
        "items": [{"product_id": i.product_id, "quantity": i.quantity} for i in view.items],
    }


def order_timeout(query: MultiMapping[str], default: float) -> float:
    """The seconds to wait given by `?timeout=S` (else `default`); _Answer 400 naming the problem:
    a parameter other than `timeout`, or a timeout that is not a number in (0, MAX_ORDER_TIMEOUT]."""
    unknown = sorted({name for name in query if name != "timeout"})
    if unknown:
        shown = ", ".join(repr(_shortened(name)) for name in unknown[:5])
        raise _Answer(400, _malformed(f"unknown query parameter(s) {shown}: only 'timeout' is taken"))
    values = query.getall("timeout", [])
    if not values:
        return default
    problem = f"timeout must be a number of seconds in (0, {MAX_ORDER_TIMEOUT:g}]"
    if len(values) > 1:
        raise _Answer(400, _malformed(f"{problem}, given once; got {len(values)} of them"))
    text = values[0]
    seconds = float(text) if _TIMEOUT.fullmatch(text) else math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_ORDER_TIMEOUT):
        raise _Answer(400, _malformed(f"{problem}, got {_shortened(text)!r}"))
    return seconds


def _malformed(problem: str) -> dict[str, Any]:
    return {"error": "malformed request", "problems": [problem]}


def _shortened(text: str) -> str:
    """A value of the request, as an answer may show it: 40 characters at most, a run of 12 or
    more digits masked (a card number, perhaps)."""
    masked = mask_digits(text)
    return masked[:40] + ("..." if len(masked) > 40 else "")


class _Drain:
    """Whether the node is stopping, and when the orders in flight stop waiting for outcomes."""

    def __init__(self) -> None:
        self.stopping = False
        self.over = asyncio.Event()  # set DRAIN_SECONDS after the stop began

    def begin(self, seconds: float) -> None:
        self.stopping = True
        asyncio.get_running_loop().call_later(seconds, self.over.set)


def make_node_app(
    system: OrderSystem,
    token: str,
    *,
    default_timeout: float = DEFAULT_ORDER_TIMEOUT,
    waiters: int = WAITERS,
    drain: _Drain | None = None,
) -> web.Application:
    """The aiohttp application serving `system` (started already) to holders of `token`.

    Must be made in the event loop that runs it. Its thread pools (`waiters` threads waiting
    for outcomes, VIEW_THREADS asking for views) are shut down when it is cleaned up,
    without waiting: a waiter still blocked is released when the system stops.
    """
    expected = as_bytes(token)
    drain = drain or _Drain()
    waiting = concurrent.futures.ThreadPoolExecutor(waiters, thread_name_prefix="node-waiter")
    views = concurrent.futures.ThreadPoolExecutor(VIEW_THREADS, thread_name_prefix="node-views")

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        """The token first (before the body is read and the path is looked at; not for
        /health), then the handler; every refusal as JSON."""
        try:
            if request.path != "/health" and not token_matches(request, expected):
                response = web.json_response({"error": "unauthorized"}, status=401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="saga-actors"'
                return response
            return await handler(request)
        except _Answer as answer:
            return web.json_response(answer.body, status=answer.status)
        except web.HTTPException as error:  # aiohttp's own: 404, 405, 413
            return web.json_response(
                {"error": error.reason.lower()},
                status=error.status,
                headers={k: v for k, v in error.headers.items() if k.lower() == "allow"},
            )
        except ConnectionError as error:  # the journal's database is unreachable (PostgresUnavailable)
            logger.warning(
                "%s %s: journal unavailable (%s)", request.method, mask_digits(request.path), error
            )
            return web.json_response({"error": "journal unavailable"}, status=503)
        except Exception as error:
            # A bug. Only the error's type is logged: its message or traceback might quote the request.
            shown = mask_digits(request.path)
            logger.error("%s %s: internal error (%s)", request.method, shown, type(error).__name__)
            return web.json_response({"error": "internal error"}, status=500)

    async def place(request: web.Request) -> web.StreamResponse:
        timeout = order_timeout(request.query, default_timeout)
        if drain.stopping:
            raise _Answer(503, {"error": "node stopping"})
        try:
            body = await read_json_body(request, MAX_BODY)
        except BodyRefused as refused:
            error = "body too large" if refused.status == 413 else "malformed request"
            raise _Answer(refused.status, {"error": error, "problems": [refused.problem]}) from None
        deadline = time.monotonic() + timeout
        # Placed in a waiter thread, not here: on a node of a cluster, placing an order writes
        # its start to the shared journal (a round trip), which must not hold the event loop.
        placed: concurrent.futures.Future[OrderFuture] = concurrent.futures.Future()
        job = waiting.submit(_place, system, body, deadline, placed)
        outcome = asyncio.wrap_future(job)
        over: asyncio.Future[Any] = asyncio.ensure_future(drain.over.wait())
        either: set[asyncio.Future[Any]] = {outcome, over}
        try:
            await asyncio.wait(either, timeout=timeout + _HAND_BACK, return_when="FIRST_COMPLETED")
        finally:
            over.cancel()
        if not outcome.done():  # no waiter free in time, or the node is stopping
            if job.cancel():  # it never started: nothing was placed
                raise _Answer(503, {"error": "node busy"})
            if placed.done():
                return _not_known(placed.result().order_id)
            order_id = body.get("order_id") if isinstance(body, dict) else None
            return _not_known(order_id if isinstance(order_id, str) else None)
        result = outcome.result()
        if isinstance(result, SystemNotRunning) and not placed.done():
            raise _Answer(503, {"error": "node not running"})
        return _answer(placed.result(), result)

    async def order(request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        order_id, _ = check_order_id(request.match_info["order_id"])
        if order_id is None:  # not an order id (a NUL, too long...): no order can have it
            raise _Answer(404, {"error": "no such order"})
        try:
            view = await loop.run_in_executor(views, system.order, order_id)
        except SystemNotRunning:
            raise _Answer(503, {"error": "node not running"}) from None
        if view is None:
            raise _Answer(404, {"error": "no such order"})
        return web.json_response(order_view_to_json(view))

    async def health(request: web.Request) -> web.StreamResponse:
        if drain.stopping:
            return web.json_response({"status": "stopping"}, status=503)
        if not system.running:
            return web.json_response({"status": "not running"}, status=503)
        return web.json_response({"status": "running"})

    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard])
    app.router.add_post("/orders", place)
    app.router.add_get("/orders/{order_id}", order, allow_head=False)
    app.router.add_get("/health", health, allow_head=False)

    async def shut_pools(app: web.Application) -> None:
        waiting.shutdown(wait=False, cancel_futures=True)
        views.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shut_pools)
    return app


def _place(
    system: OrderSystem, body: Any, deadline: float, placed: concurrent.futures.Future[OrderFuture]
) -> bool | BaseException:
    """In a waiter thread: place the order (its future is set on `placed`), then its outcome,
    or the error its future raised (TimeoutError if it is not known by `deadline`, a
    `time.monotonic()` instant); `SystemNotRunning` with `placed` unset if it was not placed."""
    try:
        future = system.submit(body)  # validates; on a cluster node, journals the order's start
    except SystemNotRunning as error:
        return error
    placed.set_result(future)
    try:
        return future.get(max(deadline - time.monotonic(), 0.0))
    except Exception as error:
        return error


def _answer(future: OrderFuture, outcome: bool | BaseException) -> web.StreamResponse:
    if isinstance(outcome, bool):
        return web.json_response({"order_id": future.order_id, "confirmed": outcome})
    if isinstance(outcome, InvalidOrder):
        return web.json_response({"error": "invalid order", "problems": outcome.problems}, status=422)
    if isinstance(outcome, IdempotencyConflict):
        body = {"error": "idempotency conflict", "order_id": outcome.order_id}
        return web.json_response(body, status=409)
    if isinstance(outcome, TimeoutError):
        return _not_known(future.order_id)
    if isinstance(outcome, ConnectionError):  # the journal's database is unreachable: nothing known
        return web.json_response({"error": "journal unavailable", "order_id": future.order_id}, status=503)
    if isinstance(outcome, SystemNotRunning):
        return web.json_response({"error": "node stopping", "order_id": future.order_id}, status=503)
    raise outcome  # a bug: the guard answers 500


def _not_known(order_id: str | None) -> web.StreamResponse:
    return web.json_response({"order_id": order_id, "error": "outcome not known in time"}, status=504)


async def run_node(
    system: OrderSystem,
    token: str,
    *,
    host: str,
    port: int,
    default_timeout: float = DEFAULT_ORDER_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ready: Callable[[str], None],
) -> int:
    """Serve `system` (started already) until SIGTERM or SIGINT, or until it stops running.

    Once listening, calls `ready(url)`. At a signal: /health says 503 and new orders are
    refused (503, nothing placed); the orders in flight are answered with their outcome, or
    with 504 if it is not known within DRAIN_SECONDS; then it returns - 0 after SIGTERM, 130
    after SIGINT (Ctrl-C) - and the caller stops the system. Returns 1 if the system stopped
    running by itself (its supervision gave up). Raises OSError if it cannot listen.
    """
    stopping = asyncio.Event()
    drain = _Drain()
    failed = False

    async def watch() -> None:
        nonlocal failed
        while not stopping.is_set():
            if not system.running and not system.runtime.rejoining:
                failed = True
                logger.error("the order system stopped running: %s", system.runtime.failure)
                stopping.set()
            await asyncio.sleep(HEALTH_EVERY)  # a health check's period, not a synchronisation

    def draining() -> None:
        drain.begin(DRAIN_SECONDS)
        if not failed:
            logger.info("node stopping: answering the orders in flight")

    watcher = asyncio.ensure_future(watch())
    app = make_node_app(system, token, default_timeout=default_timeout, drain=drain)
    try:
        received = await serve_until(
            app,
            stopping,
            host=host,
            port=port,
            max_connections=max_connections,
            drain_seconds=DRAIN_SECONDS + _HAND_BACK + DRAIN_MARGIN,
            listening=ready,
            draining=draining,
        )
    finally:
        watcher.cancel()
    if failed:
        return 1
    return 128 + signal.SIGINT if received == signal.SIGINT else 0
