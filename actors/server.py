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
import hmac
import http
import json
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pykka
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

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


DEFAULT_MAX_CONNECTIONS = 1000  # open connections at once; more are closed as they come
IDLE_TIMEOUT = 10.0  # seconds a connection may stay without a complete request


def _bounded_connections(limit: int) -> None:
    """Close a new connection at once while `limit` are open (process-wide, in the service's own
    process): a flood of connections, authenticated or not, cannot take every file descriptor."""
    from aiohttp import web_protocol

    handler = web_protocol.RequestHandler
    original = getattr(handler.connection_made, "_saga_actors_original", handler.connection_made)

    def connection_made(self: Any, transport: Any) -> None:
        original(self, transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > limit:
            _over_limit.warn()
            transport.close()

    connection_made._saga_actors_original = original  # type: ignore[attr-defined]
    handler.connection_made = connection_made  # type: ignore[method-assign]


class _OnceIn:
    """Logs a warning at most once per `seconds` (a flood must not flood the log too)."""

    def __init__(self, seconds: float, message: str) -> None:
        self._seconds, self._message, self._last = seconds, message, -math.inf

    def warn(self) -> None:
        now = time.monotonic()
        if now - self._last >= self._seconds:
            self._last = now
            logger.warning(self._message)


_over_limit = _OnceIn(10.0, "too many connections at once: new ones are closed as they come")


def _more_file_descriptors() -> None:
    """Raise this process's soft limit of open files to its hard limit (best effort)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
            )
    except (ImportError, ValueError, OSError):
        pass


def _no_echo_of_bad_requests() -> None:
    """aiohttp answers a request it cannot parse with the parser's message, which quotes the
    request's bytes (a card number, say): answer it with a fixed text instead. Process-wide,
    in the service's own process; done once."""
    from aiohttp import web_protocol

    handler = web_protocol.RequestHandler
    if getattr(handler.handle_error, "_saga_actors", False):
        return
    original = handler.handle_error

    def handle_error(
        self: Any,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> Any:
        if status < 500:  # a parser's message may quote the request; its status phrase does not
            phrase = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else ""
            message = f"{status} {phrase}\n\nnot a valid HTTP request"
        return original(self, request, status, exc, message)

    handle_error._saga_actors = True  # type: ignore[attr-defined]
    handler.handle_error = handle_error  # type: ignore[method-assign]


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
    expected = _bytes(token)
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
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            # The scheme's case does not matter (RFC 9110); the token is compared in constant time.
            if not (hmac.compare_digest(_bytes(credentials), expected) and scheme.lower() == "bearer"):
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
    """The body as JSON; 413 over `MAX_BODY` (before reading it when its length is declared),
    400 naming the problem if it is not JSON. Nothing of the body is quoted."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _Refused(413, "body_too_large", [f"the body must be at most {MAX_BODY} bytes"])
    try:
        raw = await request.read()  # aiohttp stops reading past client_max_size
    except web.HTTPRequestEntityTooLarge:
        raise _Refused(413, "body_too_large", [f"the body must be at most {MAX_BODY} bytes"]) from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        problem = f"the body is not JSON: {error.msg} at line {error.lineno} column {error.colno}"
    except (ValueError, RecursionError):  # not UTF-8, a number too long, nested too deep
        problem = "the body is not JSON: not UTF-8, or a number too long, or nested too deep"
    raise _Refused(400, "malformed", [problem])


def _bytes(text: str) -> bytes:
    """`text` as bytes for a constant-time comparison (any string encodes)."""
    return text.encode("utf-8", "surrogatepass")


def _without_the_request(record: logging.LogRecord) -> bool:
    """A filter for aiohttp's server log: a request that is not HTTP is logged in one line, by
    the parser's error type only - the error's text quotes the offending bytes (a header, a
    body), which might hold a card number."""
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError):
        record.msg = f"{record.getMessage()}: malformed HTTP ({type(error).__name__}, status {error.code})"
        record.args = ()
        record.exc_info = None
        record.exc_text = None
    return True


def listening_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    _no_echo_of_bad_requests()
    _bounded_connections(max_connections)
    _more_file_descriptors()
    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(_without_the_request)
    app = make_app(node, token, request_timeout=request_timeout, metrics=metrics)
    runner = web.AppRunner(
        app,
        access_log=None,  # no access log: nothing of a request is written anywhere
        handle_signals=False,
        # A connection that sends no complete request for this long is closed: slow or
        # half-sent headers (a slowloris) cannot hold a connection, and a file descriptor, for long.
        keepalive_timeout=IDLE_TIMEOUT,
        shutdown_timeout=max_latency + request_timeout + REPLY_GRACE + DRAIN_MARGIN,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        ready(f"saga-actors {node.service} listening on {listening_url(bound_host, bound_port)}")
        await stopping.wait()
        if not failed:
            logger.info("%s service stopping: draining the requests in flight", node.service)
    finally:
        await runner.cleanup()  # stops accepting, then waits for the handlers in flight
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        server_log.removeFilter(_without_the_request)
    return 1 if failed else 0
