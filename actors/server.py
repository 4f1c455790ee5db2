"""The HTTP/JSON face of one service, on aiohttp, to the protocol of `actors/wire.py`.

One asyncio event loop serves every connection. A command is checked
(token, then size, JSON and fields - all before anything reaches the
actor), spends its simulated latency as a timer in the loop, and is told to
the actor as a `Request` whose `reply_to` resolves a future of the loop
(`loop.call_soon_threadsafe`): no thread per request, and no actor ever
waits for the network. The actor replies only once its events are durable,
so a 200 is only sent for an effect that survives a SIGKILL.

What each status means is the protocol's (see `actors/wire.py`): 503 only
when nothing happened - the actor refused the request before any effect, or
it never reached the actor (restarting); 504 when the outcome is unknown -
the actor did not answer within the request timeout (it crashed while
handling it, or is that slow).

Views (GET) and the restock are asks, answered from a small pool of
threads (`VIEW_THREADS`): they are an operator's, not the saga's, traffic.

Nothing of a request is ever logged (aiohttp's access log is off, and a
request that is not HTTP is logged by its error's type only), nor the token;
the card number is never quoted in an answer either.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pykka
from aiohttp import web

from saga_actors.actors.http_common import (
    DEFAULT_MAX_CONNECTIONS,
    BodyRefused,
    as_bytes,
    read_json_body,
    serve_until,
    token_matches,
)
from saga_actors.actors.inventory import StockProducts
from saga_actors.actors.service import VIEWS, ServiceNode
from saga_actors.actors.validation import bounded
from saga_actors.actors.wire import (
    MAX_BODY,
    OPERATIONS,
    WireError,
    captures_to_json,
    decode_command,
    payments_to_json,
    reply_to_http,
    stock_to_json,
)
from saga_actors.sagas.metrics import Metrics
from saga_actors.sagas.protocol import Reply, Request

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "IN_FLIGHT",
    "REQUESTS",
    "REQUEST_SECONDS",
    "make_app",
    "run_server",
    "server_metrics",
]

logger = logging.getLogger(__name__)

DEFAULT_REQUEST_TIMEOUT = 5.0  # seconds the actor may take to answer before the service says 504
REPLY_GRACE = 0.25  # seconds past a request's deadline its "expired" refusal may take to come back
VIEW_THREADS = 2  # threads asking the actor for views and restocks
DRAIN_MARGIN = 1.0  # seconds added to the longest a request can take, for the drain at stop

# The service's own metrics (`--metrics-port`).
REQUESTS = "service_requests"  # labelled counter: requests answered, by operation and status
REQUEST_SECONDS = "service_request_seconds"  # histogram: from the request's arrival to its answer
IN_FLIGHT = "service_requests_in_flight"  # gauge: requests being handled

_VIEW_JSON: dict[str, Callable[[Any], dict[str, Any]]] = {
    "stock": stock_to_json,
    "payments": payments_to_json,
    "captures": captures_to_json,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def server_metrics() -> Metrics:
    """The counters a service keeps: its actor's restarts, the requests in flight, requests
    answered by operation and status, and each request's time to its answer by operation."""
    return Metrics(
        ("restarts", IN_FLIGHT),
        histograms={REQUEST_SECONDS: ("operation",)},
        labelled={REQUESTS: ("operation", "status")},
    )


class _Refused(Exception):
    """A request refused before anything reached the actor: its status and JSON body."""

    def __init__(self, status: int, reason: str, problems: list[str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.body: dict[str, Any] = {"ok": False, "reason": reason}
        if problems:
            self.body["problems"] = problems


class _LoopReply:
    """The `reply_to` of a request: the actor's thread hands its `Reply` to the event loop."""

    __slots__ = ("_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Reply]) -> None:
        self._loop = loop
        self._future = future

    def tell(self, message: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._resolve, message)
        except RuntimeError:
            pass  # the loop is closed: nobody waits any more

    def _resolve(self, message: Any) -> None:
        if not self._future.done():  # not given up on (timed out) already
            self._future.set_result(message)


def make_app(
    node: ServiceNode,
    token: str,
    *,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    metrics: Metrics | None = None,
    views: concurrent.futures.Executor | None = None,
) -> web.Application:
    """The aiohttp application serving `node` to holders of `token`.

    `views` runs the blocking asks (views, restock); a pool of `VIEW_THREADS` by default
    (shut down when the application is cleaned up).
    """
    service = node.service
    expected = as_bytes(token)
    pool = views or concurrent.futures.ThreadPoolExecutor(VIEW_THREADS, thread_name_prefix=f"{service}-views")

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        """The token first (before the body is read, and for every path), then the handler;
        every refusal as JSON; the request counted."""
        began = time.monotonic()
        operation = request.path.rsplit("/", 1)[-1] if request.match_info.route.resource else "unknown"
        if metrics is not None:
            metrics.increment(IN_FLIGHT)
        try:
            response = await _answer(request, handler)
        finally:
            if metrics is not None:
                metrics.increment(IN_FLIGHT, -1)
        if metrics is not None:
            metrics.count(REQUESTS, (operation, str(response.status)))
            metrics.observe(REQUEST_SECONDS, time.monotonic() - began, (operation,))
        return response

    async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if not token_matches(request, expected):
                raise _Refused(401, "unauthorized")
            return await handler(request)
        except _Refused as refused:
            response = web.json_response(refused.body, status=refused.status)
            if refused.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="saga-actors"'
            return response
        except web.HTTPException as error:  # aiohttp's own: 404, 405, 413
            return web.json_response(
                {"ok": False, "reason": error.reason.lower().replace(" ", "_")},
                status=error.status,
                headers={k: v for k, v in error.headers.items() if k.lower() == "allow"},
            )
        except Exception as error:
            # A bug: the outcome is unknown (a 5xx other than 503). Only the error's type is
            # logged: its message or traceback might quote the request.
            logger.error("%s %s: internal error (%s)", request.method, request.path, type(error).__name__)
            return web.json_response({"ok": False, "reason": "internal_error"}, status=500)

    async def command(request: web.Request, operation: str) -> web.StreamResponse:
        body = await _json_body(request)
        try:
            message = decode_command(service, operation, body)
        except WireError as malformed:
            raise _Refused(400, "malformed", malformed.problems) from None
        if isinstance(message, StockProducts):
            await ask(message, 504)
            return web.json_response({"ok": True})
        expected = f"{message.order_id}:{operation}"
        if request.headers.get("Idempotency-Key") != expected:
            given = request.headers.get("Idempotency-Key")
            why = "is missing" if given is None else "does not match the body's order_id and the operation"
            problem = f"the Idempotency-Key header {why}: it must be {expected!r} here"
            raise _Refused(400, "malformed", bounded([problem]))  # long digit runs masked
        delay = node.latency()
        if delay > 0:
            await asyncio.sleep(delay)  # the simulated wire: a timer in the loop, no thread waits
        reply = await tell(message)
        if reply is None:
            return web.json_response({"ok": False, "reason": "no_answer"}, status=504)
        status, answer = reply_to_http(reply)
        return web.json_response(answer, status=status)

    async def tell(message: Any) -> Reply | None:
        """The actor's reply; None if it did not come in time (the outcome is unknown)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        deadline = time.monotonic() + request_timeout
        try:
            node.tell(Request(message, _LoopReply(loop, future), None, deadline))
        except pykka.ActorDeadError:
            return Reply.unavailable(None, "restarting")  # it never reached the actor
        try:
            # A request still in the mailbox at its deadline is refused by the actor before
            # any effect ("expired", a 503): wait a little past it for that refusal.
            return await asyncio.wait_for(future, request_timeout + REPLY_GRACE)
        except TimeoutError:
            return None

    async def ask(message: Any, unknown_status: int) -> Any:
        """The actor's answer to a query, asked from the pool. `unknown_status` if it does
        not answer in time (504 when the message may have had an effect, else 503)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, functools.partial(node.ask, message, request_timeout))
        except pykka.ActorDeadError:
            raise _Refused(503, "restarting") from None
        except pykka.Timeout:
            raise _Refused(unknown_status, "no_answer") from None

    async def view(request: web.Request, name: str) -> web.StreamResponse:
        answer = await ask(VIEWS[(service, name)](), 503)
        return web.json_response(_VIEW_JSON[name](answer))

    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard])
    for (owner, operation), _ in OPERATIONS.items():
        if owner == service:
            app.router.add_post(f"/{service}/{operation}", functools.partial(command, operation=operation))
    for owner, name in VIEWS:
        if owner == service:
            app.router.add_get(f"/{service}/{name}", functools.partial(view, name=name), allow_head=False)

    async def shut_pool(app: web.Application) -> None:
        if views is None:
            pool.shutdown(wait=True)

    app.on_cleanup.append(shut_pool)
    return app


async def _json_body(request: web.Request) -> Any:
    """The body as JSON (`read_json_body`), refused as the protocol says: 413, or 400 naming the problem."""
    try:
        return await read_json_body(request, MAX_BODY)
    except BodyRefused as refused:
        raise _Refused(refused.status, refused.reason, [refused.problem]) from None


async def run_server(
    node: ServiceNode,
    token: str,
    *,
    host: str,
    port: int,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_latency: float = 0.0,
    metrics: Metrics | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ready: Callable[[str], None],
) -> int:
    """Serve `node` (started already) until SIGTERM or SIGINT, or until its tree gives up.

    Once listening, calls `ready(line)` with the readiness line. At a signal: stop accepting,
    answer every request in flight (the actor is still running), and return 0; the caller
    then stops the node. Returns 1 if the node's tree gave up. Raises OSError if it cannot listen.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    failed: list[BaseException] = []

    def fail(error: BaseException) -> None:
        failed.append(error)
        stopping.set()

    def on_failure(error: BaseException) -> None:  # a supervisor's thread
        try:
            loop.call_soon_threadsafe(fail, error)
        except RuntimeError:
            pass  # the loop has ended: the service is stopping anyway

    node.on_failure = on_failure
    app = make_app(node, token, request_timeout=request_timeout, metrics=metrics)

    def draining() -> None:
        if not failed:
            logger.info("%s service stopping: draining the requests in flight", node.service)

    await serve_until(
        app,
        stopping,
        host=host,
        port=port,
        max_connections=max_connections,
        drain_seconds=max_latency + request_timeout + REPLY_GRACE + DRAIN_MARGIN,
        listening=lambda url: ready(f"saga-actors {node.service} listening on {url}"),
        draining=draining,
    )
    return 1 if failed else 0
