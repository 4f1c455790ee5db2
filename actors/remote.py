"""The inventory and payment as services in other processes: `OrderSystem(inventory=URL, ...)`.

The saga's commands go to them through `sagas.remote` (remote participants
over one HTTP client per system), encoded and decoded by the wire protocol
of `actors.wire`; the views (`inventory()`, `payments()`, the captures
`check_consistency()` needs) and `restock()` are HTTP calls from the
caller's thread. The shared secret is sent as `Authorization: Bearer
<token>` and never shown: not in a repr, an error message or a log record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from saga_actors.actors.errors import mask_digits
from saga_actors.actors.inventory import StockProducts, StockView
from saga_actors.actors.payment import CapturesView, PaymentView
from saga_actors.actors.wire import (
    captures_from_json,
    encode_command,
    payments_from_json,
    reply_from_http,
    stock_from_json,
)
from saga_actors.sagas.remote import HttpClient, RemoteServiceError, remote_participant
from saga_actors.sagas.runtime import Participant, Resource

T = TypeVar("T")

__all__ = ["QUERY_TIMEOUT", "TOKEN_ENV", "RemoteServices", "token_problems", "url_problems"]

TOKEN_ENV = "SAGA_ACTORS_TOKEN"  # where the shared secret is read from when none is given
QUERY_TIMEOUT = 10.0  # seconds a view or a restock may take before it is an error
SERVICES = ("inventory", "payment")


def url_problems(name: str, url: object) -> list[str]:
    """What is wrong with a service's base URL (empty if nothing): http or https, a host, a port
    in 1-65535 if one is given, maybe a path prefix; no credentials, query or fragment."""
    shape = "a URL such as http://127.0.0.1:8081"
    if not isinstance(url, str) or not url:
        return [f"{name} must be {shape} or None, got {type(url).__name__}"]
    if any(c <= " " or c == "\x7f" for c in url):
        return [f"{name} must be {shape}: it holds whitespace or control characters"]
    try:
        parts = urlsplit(url)
    except ValueError:
        return [f"{name} must be {shape}: it does not parse"]
    problems = []
    if parts.scheme not in ("http", "https"):
        problems.append(f"{name}: the scheme must be http or https, got {parts.scheme[:20]!r}")
    if "@" in parts.netloc:  # not quoted: it may hold a password
        problems.append(f"{name}: credentials do not belong in the URL (the token goes in service_token)")
    elif not parts.hostname:
        problems.append(f"{name}: the URL has no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        problems.append(f"{name}: the port must be an integer from 1 to 65535")
    if parts.query or parts.fragment:
        problems.append(f"{name}: the URL must not have a query or a fragment")
    return problems


def token_problems(token: object) -> list[str]:
    """What is wrong with a token (never quoted): a non-empty string of visible ASCII characters."""
    if not isinstance(token, str) or not token:
        return [
            "service_token is required with a service URL: pass service_token= or set the "
            f"environment variable {TOKEN_ENV}"
        ]
    if not all("!" <= c <= "~" for c in token) or len(token) > 4096:
        return ["service_token must be 1 to 4096 visible ASCII characters (no spaces)"]
    return []


def resolve_token(token: str | None) -> str | None:
    """The token given, else the environment's."""
    return token if token is not None else os.environ.get(TOKEN_ENV)


def _encode(command: Any) -> tuple[str, Mapping[str, Any], str]:
    _service, path, body, key = encode_command(command)
    return path, body, key


class RemoteServices:
    """The order system's remote inventory and/or payment, and the one HTTP client they share.

    `urls` maps "inventory" and/or "payment" to a checked base URL; the
    token is checked too (see `url_problems`, `token_problems`). Raises
    ImportError naming the extra `http` if aiohttp is not installed.
    """

    def __init__(self, urls: Mapping[str, str], token: str, *, call_timeout: float) -> None:
        self.urls = {name: url.rstrip("/") for name, url in urls.items()}
        self.client = HttpClient(name="order-system-http")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._call_timeout = call_timeout

    def __repr__(self) -> str:
        return f"<RemoteServices {self.urls}>"  # never the token

    def resource(self) -> Resource:
        return self.client.resource()

    def participant(self, name: str) -> Participant:
        """The saga's participant `name` as the remote service (its calls abandoned after
        `call_timeout` seconds)."""
        return remote_participant(
            name,
            self.client,
            self.urls[name],
            _encode,
            reply_from_http,
            headers=self._headers,
            timeout=self._call_timeout,
        )

    def stock(self) -> dict[int, StockView]:
        return self._view("inventory", "/inventory/stock", stock_from_json)

    def payments(self) -> dict[str, PaymentView]:
        return self._view("payment", "/payment/payments", payments_from_json)

    def captures(self) -> CapturesView:
        return self._view("payment", "/payment/captures", captures_from_json)

    def _view(self, service: str, path: str, parse: Callable[[Any], T]) -> T:
        body = self._get(service, path)
        try:
            return parse(body)
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError):
            raise RemoteServiceError(
                f"the {service} service at {self.urls[service]} answered {path} with a body that is not "
                "the protocol's view (is the URL a saga-actors service?)"
            ) from None

    def restock(self, command: StockProducts) -> None:
        """Send one restock. Not retried: a restock has no idempotency key, so an answer that
        never came (the error says so) may or may not have been applied - look at the stock."""
        _service, path, body, _key = encode_command(command)
        self._exchange("inventory", "POST", path, json.dumps(body).encode())

    def _get(self, service: str, path: str) -> Any:
        body = self._exchange(service, "GET", path, None)
        try:
            return json.loads(body)
        except ValueError:
            raise RemoteServiceError(
                f"the {service} service at {self.urls[service]} answered {path} with a body that is not JSON"
            ) from None

    def _exchange(self, service: str, method: str, path: str, body: bytes | None) -> bytes:
        url = self.urls[service]
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            status, answer = self.client.call(
                method, url + path, body=body, headers=headers, timeout=QUERY_TIMEOUT
            )
        except RemoteServiceError as error:
            raise RemoteServiceError(f"the {service} service did not answer: {error}") from None
        if status != 200:
            hint = " (is service_token right?)" if status == 401 else ""
            raise RemoteServiceError(
                f"the {service} service at {url} answered {method} {path} with {status}{hint}: "
                + _reason(answer)
            )
        return answer


def _reason(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return "(no reason)"
    reason = parsed.get("reason") if isinstance(parsed, dict) else None
    return mask_digits(reason[:200]) if isinstance(reason, str) else "(no reason)"
