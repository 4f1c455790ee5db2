"""Remote participants: a saga's requests as HTTP calls to services in other processes.

::

    saga host --Request--> RemoteParticipant (a pykka actor)
                             encodes the command, hands the call to the client's
                             event loop (run_coroutine_threadsafe) and takes its
                             next message: it never waits for the network
                           HttpClient (one asyncio event loop on one thread per
                             runtime, one aiohttp session: a bounded pool of
                             keep-alive connections, no thread per request)
    saga host <--Reply---- the loop, when the answer comes

Nothing here knows what the commands are: the application passes the
function that turns a command into a call (`Encode`: path, JSON body,
idempotency key) and the one that turns an answer into a `Reply` (`Decode`,
which returns None when the answer says the outcome is unknown).

What the saga is told:

- an answer: whatever `decode` makes of it;
- the connection could not be made (refused, no route, DNS, TLS handshake):
  `Reply.unavailable("unreachable")` at once - nothing was sent, so nothing
  happened, and the saga retries after its backoff;
- a reset, a connection closed mid-answer, no answer within the timeout, an
  answer `decode` calls unknown (a 5xx other than 503): nothing. The request
  may have had an effect; the saga's attempt timeout counts it as transient,
  retries it with the same idempotency key, or compensates it on rollback.

An HTTP call is abandoned at its request's `deadline` or after `timeout`
seconds, whichever comes first; a request already past its deadline is
refused as "expired" without being sent, as `ParticipantActor` does.

aiohttp is an optional dependency (the extra `http`): this module imports
it only when an `HttpClient` is made, and says which extra to install if it
is missing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from types import ModuleType
from typing import Any

import pykka

from saga_actors.sagas.participant import send_reply
from saga_actors.sagas.protocol import Correlation, Reply, Request
from saga_actors.sagas.runtime import Participant, Resource, SystemNotRunning
from saga_actors.supervision.monitor import Monitored
from saga_actors.supervision.resource import FailureReport

__all__ = [
    "DEFAULT_CONNECTIONS_PER_HOST",
    "DEFAULT_TIMEOUT",
    "EXTRA",
    "Decode",
    "Encode",
    "HttpClient",
    "RemoteParticipant",
    "RemoteServiceError",
    "import_aiohttp",
    "remote_participant",
]

logger = logging.getLogger(__name__)

EXTRA = "pip install 'saga-actors[http]'"
DEFAULT_TIMEOUT = 10.0  # seconds an HTTP call may take when its request has no earlier deadline
DEFAULT_CONNECTIONS_PER_HOST = 100  # the pool's bound per service; further calls wait for a connection
DEFAULT_CONNECTIONS = 400  # the pool's bound over all services
MAX_ANSWER = 64 * 1024  # bytes of a command's answer read at most (the rest is not needed)
_OPEN_TIMEOUT = 10.0  # seconds to start the loop and make the session
_CLOSE_TIMEOUT = 10.0  # seconds to cancel the calls in flight and close the session

Encode = Callable[[Any], tuple[str, Mapping[str, Any], str]]
"""command -> (path, JSON body, idempotency key or "" for none). May raise for a command it cannot send."""
Decode = Callable[[int, bytes, "Correlation | None"], "Reply | None"]
"""(HTTP status, body, correlation) -> the `Reply`, or None: the outcome is unknown, send no reply."""


def import_aiohttp() -> ModuleType:
    """The aiohttp module; ImportError naming the extra to install if it is missing."""
    try:
        return importlib.import_module("aiohttp")
    except ImportError as missing:
        raise ImportError(
            f"remote services need the aiohttp library, which is not installed; install the extra: {EXTRA}"
        ) from missing


class RemoteServiceError(RuntimeError):
    """A service did not answer a query in time, could not be reached, or answered it with an error."""


class HttpClient:
    """One asyncio event loop on its own thread, and one aiohttp session: a bounded connection pool.

    Open it before use and close it after (`resource()` gives the runtime
    a `Resource` that does both around the participants' lives); it may be
    opened again after a close. Thread-safe: `spawn` and `call` are made
    from any thread but the loop's own.

    connections_per_host: at most this many connections to one service at
        once (further calls wait for one, within their timeout);
        connections: at most this many over all services.
    """

    def __init__(
        self,
        *,
        name: str = "saga-http",
        connections_per_host: int = DEFAULT_CONNECTIONS_PER_HOST,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        for what, value in (("connections_per_host", connections_per_host), ("connections", connections)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r:.40}")
        self._aiohttp = import_aiohttp()  # here, so that a missing extra is said at once
        self.name = name
        self._per_host = connections_per_host
        self._connections = connections
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: Any = None
        self._thread: threading.Thread | None = None
        self._report: FailureReport | None = None

    def __repr__(self) -> str:
        return f"<HttpClient {self.name} {'open' if self.is_open else 'closed'}>"

    @property
    def aiohttp(self) -> ModuleType:
        """The aiohttp module (for its exception types)."""
        return self._aiohttp

    @property
    def is_open(self) -> bool:
        return self._loop is not None

    def resource(self) -> Resource:
        """The client as a runtime `Resource`: opened before the participants, closed after them,
        and reopened (with the participants and sagas after it) if its loop's thread dies."""
        return Resource(self.name, self.open, self.close, self.watch)

    def watch(self, report: FailureReport) -> None:
        """`report` is called (from the loop's thread) if the loop stops without `close()`."""
        self._report = report

    def open(self) -> None:
        """Start the loop's thread and make the session (in the caller's thread; raises if it cannot)."""
        aiohttp = self._aiohttp
        with self._lock:
            if self._loop is not None:
                return
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=self._run, args=(loop,), name=self.name, daemon=True)
            thread.start()

            async def make_session() -> Any:
                connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=self._per_host)
                return aiohttp.ClientSession(connector=connector, trust_env=False)

            try:
                session = asyncio.run_coroutine_threadsafe(make_session(), loop).result(_OPEN_TIMEOUT)
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(_CLOSE_TIMEOUT)
                if not thread.is_alive():
                    loop.close()
                raise
            self._loop, self._session, self._thread = loop, session, thread

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            if self._loop is loop and self._report is not None:  # stopped, and not by close()
                self._report(RuntimeError(f"{self.name}: the event loop stopped"))

    def close(self) -> None:
        """Cancel the calls in flight (their outcome is unknown: no reply), close the session and
        the connections, stop the loop and its thread. Idempotent."""
        with self._lock:
            loop, session, thread = self._loop, self._session, self._thread
            self._loop = self._session = self._thread = None
        if loop is None or thread is None:
            return
        if not loop.is_running():  # the loop died (and said so): nothing can run on it any more
            thread.join(_CLOSE_TIMEOUT)
            loop.close()
            return

        async def shutdown() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(_CLOSE_TIMEOUT)
        except Exception as error:  # a close must not fail the runtime's stop
            logger.warning("%s: closing the session: %s", self.name, type(error).__name__)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CLOSE_TIMEOUT)
        if not thread.is_alive():
            loop.close()

    def spawn(self, make: Callable[[Any], Coroutine[Any, Any, None]]) -> None:
        """Run `make(session)` on the loop without waiting for it. Raises `SystemNotRunning` if the
        client is closed (nothing was sent)."""
        with self._lock:
            loop, session = self._loop, self._session
        if loop is None:
            raise SystemNotRunning(f"{self.name} is closed")
        try:
            asyncio.run_coroutine_threadsafe(make(session), loop)
        except RuntimeError as closed:  # closed between the lock and the call
            raise SystemNotRunning(f"{self.name} is closed") from closed

    async def exchange(
        self,
        session: Any,
        method: str,
        url: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float,
        limit: int,
    ) -> tuple[int, bytes]:
        """One HTTP call on the loop: (status, at most `limit` bytes of the body)."""
        aiohttp = self._aiohttp
        async with session.request(
            method,
            url,
            data=body,
            headers=dict(headers),
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as response:
            data = bytearray()
            while len(data) <= limit:  # one byte over the limit tells a caller it was exceeded
                more = await response.content.read(limit + 1 - len(data))
                if not more:
                    break
                data += more
            return int(response.status), bytes(data)

    def call(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        limit: int = 64 * 1024 * 1024,
    ) -> tuple[int, bytes]:
        """One HTTP call from a caller's thread (never the loop's): wait at most `timeout` seconds
        for (status, body). Raises `RemoteServiceError` if there is no answer (the message says
        why: unreachable, no answer in time, reset), `RemoteServiceError` for a body over
        `limit` bytes, and `SystemNotRunning` if the client is closed."""
        result: concurrent.futures.Future[tuple[int, bytes]] = concurrent.futures.Future()

        async def run(session: Any) -> None:
            try:
                answer = await self.exchange(
                    session, method, url, body=body, headers=headers or {}, timeout=timeout, limit=limit
                )
            except BaseException as error:
                result.set_exception(error)
                if isinstance(error, asyncio.CancelledError):
                    raise
            else:
                result.set_result(answer)

        self.spawn(run)
        try:
            status, data = result.result(timeout + 1.0)
        except TimeoutError:  # concurrent.futures.TimeoutError and asyncio.TimeoutError are it
            raise RemoteServiceError(f"{method} {url}: no answer within {timeout} s") from None
        except asyncio.CancelledError:
            raise SystemNotRunning(f"{self.name} closed during {method} {url}") from None
        except self._aiohttp.ClientConnectorError as error:
            raise RemoteServiceError(f"{method} {url}: unreachable ({_why(error)})") from None
        except (self._aiohttp.ClientError, OSError) as error:
            raise RemoteServiceError(f"{method} {url}: no answer ({_why(error)})") from None
        if len(data) > limit:
            raise RemoteServiceError(f"{method} {url}: an answer over {limit} bytes")
        return status, data


def _why(error: BaseException) -> str:
    """A short reason for a failed call (the exception's type, and the OS's words for a socket error)."""
    cause = getattr(error, "os_error", None) or error
    text = getattr(cause, "strerror", None)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RemoteParticipant(Monitored, pykka.ThreadingActor):
    """A saga participant that is a service elsewhere: each `Request` becomes one HTTP POST.

    client: the runtime's `HttpClient` (open while the participants run).
    url: the service's base URL (`http://host:port`, maybe with a path
        prefix); a command goes to `url + path`.
    encode, decode: see `Encode` and `Decode`.
    headers: sent with every call (e.g. `Authorization`); never logged.
    timeout: the longest an HTTP call may take, in seconds (a request's
        earlier `deadline` cuts it shorter).

    Its mailbox only ever encodes and hands calls over: the answers go from
    the client's loop straight to each request's `reply_to`, so a restart of
    this actor loses no answer in flight.
    """

    def __init__(
        self,
        client: HttpClient,
        url: str,
        encode: Encode,
        decode: Decode,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        name: str = "remote",
    ) -> None:
        super().__init__()
        self.name = name
        self._client = client
        self._url = url.rstrip("/")
        self._encode = encode
        self._decode = decode
        self._headers = {**(headers or {}), "Content-Type": "application/json"}
        self._timeout = timeout

    def __str__(self) -> str:
        return f"RemoteParticipant {self.name} at {self._url}"

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Request):
            self._forward(message)
            return None
        return super().on_receive(message)

    def _forward(self, request: Request) -> None:
        timeout = self._timeout
        if request.deadline is not None:
            left = request.deadline - time.monotonic()
            if left <= 0:  # its sender has given up on it: never sent, so no effect
                send_reply(request, Reply.unavailable(request.correlation, "expired"))
                return
            timeout = min(timeout, left)
        try:
            path, body, key = self._encode(request.command)
            data = json.dumps(body, separators=(",", ":")).encode()
        except Exception as error:  # a command this service does not take: refused, nothing sent
            logger.error(
                "%s: cannot send %s (%s)", self.name, type(request.command).__name__, type(error).__name__
            )
            reason = f"internal_error: {type(error).__name__}"
            send_reply(request, Reply.rejected(request.correlation, reason))
            return
        headers = {**self._headers, "Idempotency-Key": key} if key else self._headers
        url = self._url + path
        client, decode, name = self._client, self._decode, self.name

        async def call(session: Any) -> None:  # runs on the client's loop
            aiohttp = client.aiohttp
            try:
                status, answer = await client.exchange(
                    session, "POST", url, body=data, headers=headers, timeout=timeout, limit=MAX_ANSWER
                )
            except aiohttp.ClientConnectorError as error:  # no connection: nothing was sent
                logger.debug("%s: %s unreachable (%s)", name, url, _why(error))
                send_reply(request, Reply.unavailable(request.correlation, "unreachable"))
                return
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                logger.debug("%s: %s no answer (%s): outcome unknown", name, url, _why(error))
                return  # may have had an effect: the saga's attempt timeout retries or compensates
            except Exception:
                logger.exception("%s: %s failed", name, url)
                return
            reply = decode(status, answer, request.correlation)
            if reply is None:
                logger.debug("%s: %s answered %d: outcome unknown", name, url, status)
                return
            send_reply(request, reply)

        try:
            client.spawn(call)
        except SystemNotRunning:  # the client is closed (the runtime is stopping): nothing was sent
            send_reply(request, Reply.unavailable(request.correlation, "unreachable"))


def remote_participant(
    name: str, client: HttpClient, url: str, encode: Encode, decode: Decode, **options: Any
) -> Participant:
    """A `Participant` for `SagaRuntime` that is the service at `url`: a `RemoteParticipant` with
    these arguments (`headers`, `timeout`). Register `client.resource()` with the runtime too,
    so that the client is open while the participant runs."""

    def start(context: Any) -> pykka.ActorRef[Any]:
        return RemoteParticipant.start(client, url, encode, decode, name=name, **options)

    return Participant(name, start)
