"""What the library's two aiohttp servers share: `saga-actors serve` (`actors/server.py`) and
`saga-actors node` (`actors/node_server.py`).

- `token_matches`: the `Authorization: Bearer <token>` check, in constant time.
- `read_json_body`: the body as JSON, 413 over a limit (before reading it when its length is
  declared), 400 naming the problem; nothing of the body is quoted (`BodyRefused`).
- `serve_until`: listen, say the readiness line, serve until a signal or an event, then stop
  accepting and drain the handlers in flight - with aiohttp's access log off, a cap on open
  connections, an idle timeout (a slowloris cannot hold a connection), and a request that is
  not HTTP answered and logged without quoting its bytes.

Everything here runs in the server's event loop thread, except the process-wide patches of
aiohttp (`no_echo_of_bad_requests`, `bounded_connections`), made once before serving.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "IDLE_TIMEOUT",
    "BodyRefused",
    "as_bytes",
    "listening_url",
    "read_json_body",
    "serve_until",
    "token_matches",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 1000  # open connections at once; more are closed as they come
IDLE_TIMEOUT = 10.0  # seconds a connection may stay without a complete request


class BodyRefused(Exception):
    """A request body refused before anything was done with it: `status` (400 or 413), a short
    `reason` (`malformed`, `body_too_large`) and one `problem` for a person, quoting nothing
    of the body."""

    def __init__(self, status: int, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.status = status
        self.reason = reason
        self.problem = problem


def token_matches(request: web.Request, expected: bytes) -> bool:
    """Whether `request` carries `Authorization: Bearer <token>` with `expected` (the token's UTF-8
    bytes). The scheme's case does not matter (RFC 9110); the token is compared in constant time."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return hmac.compare_digest(as_bytes(credentials), expected) and scheme.lower() == "bearer"


def as_bytes(text: str) -> bytes:
    """`text` as bytes for a constant-time comparison (any string encodes)."""
    return text.encode("utf-8", "surrogatepass")


async def read_json_body(request: web.Request, limit: int) -> Any:
    """The body as JSON; BodyRefused: 413 over `limit` bytes (before reading it when its length
    is declared; the application's `client_max_size` must be `limit`), 400 if it is not JSON."""
    too_large = f"the body must be at most {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        raise BodyRefused(413, "body_too_large", too_large)
    try:
        raw = await request.read()  # aiohttp stops reading past client_max_size
    except web.HTTPRequestEntityTooLarge:
        raise BodyRefused(413, "body_too_large", too_large) from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as error:
        problem = f"the body is not JSON: {error.msg} at line {error.lineno} column {error.colno}"
    except (ValueError, RecursionError):  # not UTF-8, a number too long, nested too deep
        problem = "the body is not JSON: not UTF-8, or a number too long, or nested too deep"
    raise BodyRefused(400, "malformed", problem)


def listening_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve_until(
    app: web.Application,
    stopping: asyncio.Event,
    *,
    host: str,
    port: int,
    max_connections: int,
    drain_seconds: float,
    listening: Callable[[str], None],
    draining: Callable[[], None] | None = None,
) -> int | None:
    """Serve `app` on `host`:`port` until SIGTERM or SIGINT, or until `stopping` is set, then
    drain; the signal received (None if none was).

    Once listening, calls `listening(url)` with the URL bound (the port chosen if 0 was
    given). At the end: `draining()` (if given), then stop accepting, wait up to
    `drain_seconds` for the handlers in flight (then cancel them), and close every connection.
    Raises OSError if it cannot listen.
    """
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def stop(signum: int) -> None:
        received.append(signum)
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    no_echo_of_bad_requests()
    bounded_connections(max_connections)
    more_file_descriptors()
    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(without_the_request)
    runner = web.AppRunner(
        app,
        access_log=None,  # no access log: nothing of a request is written anywhere
        handle_signals=False,
        # A connection that sends no complete request for this long is closed: slow or
        # half-sent headers (a slowloris) cannot hold a connection, and a file descriptor, for long.
        keepalive_timeout=IDLE_TIMEOUT,
        shutdown_timeout=drain_seconds,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        listening(listening_url(bound_host, bound_port))
        await stopping.wait()
        if draining is not None:
            draining()
    finally:
        await runner.cleanup()  # stops accepting, then waits for the handlers in flight
        server_log.removeFilter(without_the_request)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return received[0] if received else None


def bounded_connections(limit: int) -> None:
    """Close a new connection at once while `limit` are open (process-wide, in the server's own
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


def more_file_descriptors() -> None:
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


def no_echo_of_bad_requests() -> None:
    """aiohttp answers a request it cannot parse with the parser's message, which quotes the
    request's bytes (a card number, say): answer it with a fixed text instead. Process-wide,
    in the server's own process; done once."""
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


def without_the_request(record: logging.LogRecord) -> bool:
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
