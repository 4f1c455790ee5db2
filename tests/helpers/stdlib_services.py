"""A participant written by a user: the inventory and payment services of the wire protocol
(the docstring of `saga_actors/actors/wire.py`) with nothing but the standard library.

It imports nothing from saga_actors on purpose: the protocol, not our server,
is the contract. Each service is a `ThreadingHTTPServer` on 127.0.0.1 (an
ephemeral port), its state in-memory dicts behind one lock, every command
idempotent by order id (a repeat gets the first answer), the shared secret
compared in constant time. For the tests it can also misbehave, from a
seeded generator: refuse a share of commands with 503 before any effect, or
leave the outcome unknown (504 after the effect, or a reset connection
before or after it); and it can go down and come back on the same port
with its state.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import random
import socket
import struct
import threading
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 64 * 1024
DECLINED = {"4000000000000002": "card_declined", "4000000000009995": "insufficient_funds"}

Answer = tuple[int, dict[str, Any]]


class BadRequest(Exception):
    pass


class Inventory:
    """Stock per product; one all-or-nothing reservation per order id."""

    name = "inventory"

    def __init__(self, stock: dict[int, int]) -> None:
        self.on_hand = dict(stock)
        self.received = dict(stock)
        self.reserved = dict.fromkeys(stock, 0)
        self.reservations: dict[str, dict[str, Any]] = {}  # order id -> {status, items, reason}
        self.effects = 0  # changes made (a repeat makes none)

    def command(self, operation: str, body: dict[str, Any]) -> Answer:
        if operation == "restock":
            for product, quantity in _items(body, "stock"):
                self.on_hand[product] = self.on_hand.get(product, 0) + quantity
                self.received[product] = self.received.get(product, 0) + quantity
                self.reserved.setdefault(product, 0)
            return 200, {"ok": True}
        order_id = _order_id(body)
        entry = self.reservations.get(order_id)
        if operation == "reserve":
            items = _items(body, "items")
            if entry is None:
                if any(p not in self.on_hand for p, _ in items):
                    entry = {"status": "rejected", "reason": "unknown_product", "items": []}
                elif any(q > self.on_hand[p] - self.reserved[p] for p, q in items):
                    entry = {"status": "rejected", "reason": "insufficient_stock", "items": []}
                else:
                    for product, quantity in items:
                        self.reserved[product] += quantity
                    entry = {"status": "held", "items": items}
                    self.effects += 1
                self.reservations[order_id] = entry
            if entry["status"] in ("held", "committed"):
                return 200, {"ok": True}
            return 422, {"ok": False, "reason": entry.get("reason", "released")}
        if operation == "commit":
            if entry is not None and entry["status"] == "held":
                for product, quantity in entry["items"]:
                    self.reserved[product] -= quantity
                    self.on_hand[product] -= quantity
                entry["status"] = "committed"
                self.effects += 1
            if entry is not None and entry["status"] == "committed":
                return 200, {"ok": True}
            return 422, {"ok": False, "reason": "not_reserved"}
        if operation == "release":
            if entry is None:  # a release that overtook its reserve: a tombstone refuses it later
                self.reservations[order_id] = {"status": "released", "items": []}
            elif entry["status"] == "held":
                for product, quantity in entry["items"]:
                    self.reserved[product] -= quantity
                entry["status"] = "released"
                self.effects += 1
            elif entry["status"] == "committed":
                return 422, {"ok": False, "reason": "already_committed"}
            return 200, {"ok": True}
        raise KeyError(operation)

    def view(self, name: str) -> dict[str, Any]:
        if name != "stock":
            raise KeyError(name)
        return {
            "products": [
                {"product_id": p, "on_hand": self.on_hand[p], "reserved": self.reserved[p],
                 "received": self.received[p]}
                for p in sorted(self.on_hand)
            ]
        }  # fmt: skip


class Payment:
    """Authorize, then capture or void, per order id; the card is looked at and forgotten."""

    name = "payment"

    def __init__(self) -> None:
        self.payments: dict[str, dict[str, Any]] = {}  # order id -> {state, amount, currency} or declined
        self.captured_count = 0
        self.captured: dict[str, Decimal] = {}
        self.effects = 0

    def command(self, operation: str, body: dict[str, Any]) -> Answer:
        order_id = _order_id(body)
        entry = self.payments.get(order_id)
        if operation == "authorize":
            amount, currency, card = _authorization(body)
            if entry is None:
                if card in DECLINED:
                    entry = {"state": "declined", "reason": DECLINED[card]}
                else:
                    entry = {"state": "authorized", "amount": amount, "currency": currency}
                    self.effects += 1
                self.payments[order_id] = entry
            if entry["state"] in ("authorized", "captured"):
                return 200, {"ok": True}
            return 422, {"ok": False, "reason": entry.get("reason", "voided")}
        if operation == "capture":
            if entry is not None and entry["state"] == "authorized":
                entry["state"] = "captured"
                self.captured_count += 1
                self.captured[entry["currency"]] = self.captured.get(entry["currency"], 0) + entry["amount"]
                self.effects += 1
            if entry is not None and entry["state"] == "captured":
                return 200, {"ok": True}
            return 422, {"ok": False, "reason": "not_authorized"}
        if operation == "void":
            if entry is None:  # overtook its authorize: a tombstone
                self.payments[order_id] = {"state": "voided_unseen"}
            elif entry["state"] == "authorized":
                entry["state"] = "voided"
                self.effects += 1
            elif entry["state"] == "captured":
                return 422, {"ok": False, "reason": "already_captured"}
            return 200, {"ok": True}
        raise KeyError(operation)

    def view(self, name: str) -> dict[str, Any]:
        if name == "payments":
            shown = ("authorized", "captured", "voided")
            return {
                "payments": {
                    o: {"state": e["state"], "amount": str(e["amount"])}
                    for o, e in self.payments.items()
                    if e["state"] in shown
                }
            }
        if name == "captures":
            return {"payments": self.captured_count, "amounts": {c: str(a) for c, a in self.captured.items()}}
        raise KeyError(name)


def _order_id(body: dict[str, Any]) -> str:
    order_id = body.get("order_id")
    if not isinstance(order_id, str) or not 0 < len(order_id) <= 200:
        raise BadRequest("order_id must be a string of 1 to 200 characters")
    return order_id


def _items(body: dict[str, Any], name: str) -> list[tuple[int, int]]:
    raw = body.get(name)
    if not isinstance(raw, list) or not 0 < len(raw) <= 100:
        raise BadRequest(f"{name} must be a list of 1 to 100 items")
    items = []
    for entry in raw:
        product = entry.get("product_id") if isinstance(entry, dict) else None
        quantity = entry.get("quantity") if isinstance(entry, dict) else None
        if type(product) is not int or type(quantity) is not int or product < 0 or quantity < 1:
            raise BadRequest(f"{name} items must be {{product_id: int >= 0, quantity: int >= 1}}")
        items.append((product, quantity))
    return items


def _authorization(body: dict[str, Any]) -> tuple[Decimal, str, str]:
    try:
        amount = Decimal(body["amount"])
        currency, card = body["currency"], body["card"]["number"]
    except (KeyError, TypeError, InvalidOperation):
        raise BadRequest("amount, currency and card.number are required") from None
    if not amount.is_finite() or amount <= 0 or not isinstance(currency, str) or not isinstance(card, str):
        raise BadRequest("amount must be a positive decimal string")
    return amount, currency, card


class StdlibService:
    """One service (an `Inventory` or a `Payment`) behind HTTP, in this process.

    refuse_rate: the share of commands answered 503 before any effect.
    unknown_rate: the share of commands whose outcome the caller cannot know,
        each one of `unknown_modes`: "504-after" (the effect, then 504),
        "reset-before" (the connection reset, no effect), "reset-after"
        (the effect, then the connection reset).
    All drawn from `random.Random(seed)`; change them at any time.
    """

    def __init__(
        self,
        state: Inventory | Payment,
        token: str,
        *,
        seed: int = 0,
        refuse_rate: float = 0.0,
        unknown_rate: float = 0.0,
        unknown_modes: tuple[str, ...] = ("504-after", "reset-before", "reset-after"),
    ) -> None:
        self.state = state
        self.token = token
        self.refuse_rate = refuse_rate
        self.unknown_rate = unknown_rate
        self.unknown_modes = unknown_modes
        self.lock = threading.Lock()  # the state's one lock: a mailbox of sorts
        self.requests: dict[str, int] = {}  # operation -> requests that reached a handler
        self.keys: list[str] = []  # Idempotency-Key headers, in arrival order
        self.misbehaved: dict[str, int] = {}  # "503", "504-after", ... -> how many
        self._random = random.Random(seed)
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StdlibService:
        """Listen (on the port it had before, if it had one) and serve in a daemon thread."""
        server = _Server(("127.0.0.1", self.port), _handler(self))
        server.service = self
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(
            target=server.serve_forever, args=(0.02,), name=f"stdlib-{self.state.name}", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection (the state is kept: `start()` again)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self.lock:
            connections, self._connections = set(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> StdlibService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def fate(self) -> str:
        """What happens to the next command: "ok", "503", or one of the unknown modes."""
        with self.lock:
            draw = self._random.random()
            if draw < self.refuse_rate:
                return "503"
            if draw < self.refuse_rate + self.unknown_rate:
                return self._random.choice(self.unknown_modes)
            return "ok"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    service: StdlibService


def _handler(service: StdlibService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client's pool reuses connections

        def setup(self) -> None:
            super().setup()
            # The headers and the body go out in two writes: without this, Nagle's algorithm
            # holds the body until the client's delayed ACK (~40 ms per answer).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with service.lock:
                service._connections.add(self.connection)

        def finish(self) -> None:
            with service.lock:
                service._connections.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # nothing is logged: not a path, not a header

        def do_GET(self) -> None:
            if not self._authorized():
                return
            service_name, _, view = self.path.strip("/").partition("/")
            if service_name != service.state.name:
                self._send(404, {"ok": False, "reason": "no such path"})
                return
            with service.lock:
                try:
                    answer = service.state.view(view)
                except KeyError:
                    self._send(404, {"ok": False, "reason": "no such view"})
                    return
            self._send(200, answer)

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._send(400, {"ok": False, "reason": "Content-Length required"}, close=True)
                return
            if int(length) > MAX_BODY:
                self._send(413, {"ok": False, "reason": "body over 64 KiB"}, close=True)
                return
            raw = self.rfile.read(int(length))
            if not self._authorized():
                return
            service_name, _, operation = self.path.strip("/").partition("/")
            try:
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise BadRequest("the body must be a JSON object")
            except (ValueError, BadRequest) as error:
                self._send(400, {"ok": False, "reason": str(error)[:100]})
                return
            if service_name != service.state.name:
                self._send(404, {"ok": False, "reason": "no such operation"})
                return
            fate = service.fate()
            with service.lock:
                service.requests[operation] = service.requests.get(operation, 0) + 1
                service.keys.append(self.headers.get("Idempotency-Key", ""))
                if fate != "ok":
                    service.misbehaved[fate] = service.misbehaved.get(fate, 0) + 1
            if fate == "503":
                self._send(503, {"ok": False, "reason": "unavailable"})
                return
            if fate == "reset-before":
                self._reset()
                return
            with service.lock:
                try:
                    status, answer = service.state.command(operation, body)
                except KeyError:
                    status, answer = 404, {"ok": False, "reason": "no such operation"}
                except BadRequest as error:
                    status, answer = 400, {"ok": False, "reason": str(error)}
            if fate == "504-after":
                self._send(504, {"ok": False, "reason": "timed out"})
            elif fate == "reset-after":
                self._reset()
            else:
                self._send(status, answer)

        def _authorized(self) -> bool:
            given = self.headers.get("Authorization", "").encode()
            if hmac.compare_digest(given, f"Bearer {service.token}".encode()):
                return True
            self._send(401, {"ok": False, "reason": "unauthorized"})
            return False

        def _send(self, status: int, body: dict[str, Any], *, close: bool = False) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)

        def _reset(self) -> None:
            """Drop the connection with a TCP reset, without a word."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.close()

    return Handler


def start_services(
    token: str, stock: dict[int, int], **misbehaviour: Any
) -> tuple[StdlibService, StdlibService]:
    """An inventory with `stock` and a payment service, each listening on its own ephemeral port."""
    inventory = StdlibService(Inventory(stock), token, seed=1, **misbehaviour).start()
    payment = StdlibService(Payment(), token, seed=2, **misbehaviour).start()
    return inventory, payment
