"""The wire protocol of the inventory and payment services: HTTP and JSON.

One request per saga command, each `POST /<service>/<operation>` with a JSON
object body and the headers

    Authorization: Bearer <token>          the shared secret (401 without it)
    Idempotency-Key: <order_id>:<operation> e.g. "ord-1:reserve"; required, and it must
                                           match the body (400 otherwise); not on restock
    Content-Type: application/json

    inventory   POST /inventory/reserve   {"order_id": str,
                                           "items": [{"product_id": int, "quantity": int}, ...]}
                POST /inventory/release   {"order_id": str}
                POST /inventory/commit    {"order_id": str}
                POST /inventory/restock   {"stock": [{"product_id": int, "quantity": int}, ...]}
                GET  /inventory/stock     -> {"products": [{"product_id", "on_hand", "reserved", "received"}]}
    payment     POST /payment/authorize   {"order_id": str, "amount": "19.98", "currency": "USD",
                                           "card": {"number": str, "expiry": "MM/YY", "cvv": str|null}}
                POST /payment/void        {"order_id": str}
                POST /payment/capture     {"order_id": str}
                GET  /payment/payments    -> {"payments": {order_id: {"state": str, "amount": "9.99"}}}
                GET  /payment/captures    -> {"payments": int, "amounts": {currency: "amount"}}

Amounts are decimal strings (never floats). The answer to a command is one
of the saga's three answers, by status code:

    200 {"ok": true}                          done (now, or by an earlier request with the same key)
    422 {"ok": false, "reason": "..."}        a business rejection: final (out of stock, declined, ...)
    503 {"ok": false, "reason": "..."}        refused before any effect: retry later ("unavailable")

and, refused before any effect, nothing changed: 400 (malformed: the body
names each problem), 401 (no or wrong token), 404 (no such operation), 413
(a body over 64 KiB). The engine retries these like 503 (an attempt refused
before any effect says nothing of an earlier attempt that timed out), so a
misconfigured token makes a saga roll back once its retries are exhausted
(or, after the commit decision, wait as stuck until the token is fixed).
503 is only ever sent when nothing happened. When the
service cannot tell - its actor did not answer in time, it crashed while
handling the command - it answers 504 (or any other 5xx): like a connection
error, a reset, or no answer within the caller's attempt timeout, that is
transient and *may* have had an effect: the saga retries with the same
idempotency key, or compensates if it rolls back.

Commands are idempotent by order id (each service answers a repeat with
its first result), so at-least-once delivery gives each effect once.

This module is the protocol's one definition: the server and the engine's
remote participants both use it, and a service written in any language
that answers it can take part.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from saga_actors.actors import validation
from saga_actors.actors.inventory import CommitStock, ReleaseStock, ReserveStock, StockProducts, StockView
from saga_actors.actors.payment import (
    AuthorizePayment,
    CapturePayment,
    CapturesView,
    PaymentView,
    VoidPayment,
)
from saga_actors.actors.validation import OrderItem
from saga_actors.sagas.protocol import Reply

__all__ = [
    "MAX_BODY",
    "OPERATIONS",
    "WireError",
    "captures_from_json",
    "captures_to_json",
    "decode_command",
    "encode_command",
    "payments_from_json",
    "payments_to_json",
    "reply_from_http",
    "reply_to_http",
    "stock_from_json",
    "stock_to_json",
]

MAX_BODY = 64 * 1024  # bytes: a larger body is refused with 413

# (service, operation) -> the command class it carries
OPERATIONS: dict[tuple[str, str], type] = {
    ("inventory", "reserve"): ReserveStock,
    ("inventory", "release"): ReleaseStock,
    ("inventory", "commit"): CommitStock,
    ("inventory", "restock"): StockProducts,
    ("payment", "authorize"): AuthorizePayment,
    ("payment", "void"): VoidPayment,
    ("payment", "capture"): CapturePayment,
}
_BY_CLASS = {cls: key for key, cls in OPERATIONS.items()}


class WireError(ValueError):
    """A request body that does not follow the protocol; `problems` names each problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# --- commands ---


def encode_command(command: Any) -> tuple[str, str, dict[str, Any], str]:
    """(service, path, JSON body, idempotency key) of a saga command. KeyError for another type."""
    service, operation = _BY_CLASS[type(command)]
    body: dict[str, Any]
    match command:
        case ReserveStock(order_id=order_id, items=items):
            body = {"order_id": order_id, "items": [_item(i) for i in items]}
        case StockProducts(stock=stock):
            body = {"stock": [{"product_id": p, "quantity": q} for p, q in stock]}
            return service, f"/{service}/{operation}", body, ""
        case AuthorizePayment(order_id=order_id, amount=amount, currency=currency, card=card):
            body = {
                "order_id": order_id,
                "amount": str(amount),
                "currency": currency,
                "card": {"number": card.number, "expiry": card.expiry, "cvv": card.cvv},
            }
        case _:
            body = {"order_id": command.order_id}
    return service, f"/{service}/{operation}", body, f"{body['order_id']}:{operation}"


# The fields each command's body holds; any other is refused (a typo must not pass unseen).
_FIELDS: dict[type, tuple[str, ...]] = {
    ReserveStock: ("order_id", "items"),
    ReleaseStock: ("order_id",),
    CommitStock: ("order_id",),
    StockProducts: ("stock",),
    AuthorizePayment: ("order_id", "amount", "currency", "card"),
    VoidPayment: ("order_id",),
    CapturePayment: ("order_id",),
}
_CARD_FIELDS = ("number", "expiry", "cvv")
# The engine's validator names a payment's fields as a request does; on the wire they are these.
_PAYMENT_NAMES = (
    ("payment_info.card_number", "card.number"),
    ("payment_info.expiry", "card.expiry"),
    ("payment_info.cvv", "card.cvv"),
    ("payment_info.amount", "amount"),
    ("payment_info.currency", "currency"),
)


def decode_command(service: str, operation: str, body: object) -> Any:
    """The command a request carries, checked by the same rules as an order placed in process
    (`actors.validation`: order id, items, amount, currency, card with its Luhn check and
    expiry month). Raises KeyError for an unknown operation and `WireError` naming each
    problem of a malformed body (a card number is never quoted)."""
    cls = OPERATIONS[(service, operation)]
    if not isinstance(body, dict):
        raise WireError([f"the body must be a JSON object, got {type(body).__name__}"])
    problems: list[str] = []
    allowed = _FIELDS[cls]
    unexpected = [k for k in body if k not in allowed]
    problems += [f"{validation.show_field(k)}: not a field of {operation}" for k in unexpected[:10]]
    if cls is StockProducts:
        stock = validation.check_items(body.get("stock"), problems, "stock")
        _no_problems(problems)
        return StockProducts(tuple(sorted((i.product_id, i.quantity) for i in stock)))
    order_id, problem = validation.check_order_id(body.get("order_id"))
    if problem:
        problems.append(problem)
    if cls is ReserveStock:
        items = validation.check_items(body.get("items"), problems, "items")
        _no_problems(problems)
        return ReserveStock(str(order_id), items)
    if cls is AuthorizePayment:
        card = body.get("card")
        if not isinstance(card, dict):
            problems.append("card: must be an object {number, expiry, cvv}")
            card = {}
        problems += [
            f"card.{validation.show_field(k)}: not a field of card" for k in card if k not in _CARD_FIELDS
        ][:10]
        payment = {
            "card_number": card.get("number"),
            "expiry": card.get("expiry"),
            "cvv": card.get("cvv"),
            "amount": body.get("amount"),
            "currency": body.get("currency"),
        }
        found: list[str] = []
        checked, amount, currency = validation.check_payment(payment, found)
        for problem in found:
            for engine_name, wire_name in _PAYMENT_NAMES:
                problem = problem.replace(engine_name, wire_name)
            problems.append(problem)
        _no_problems(problems)
        assert checked is not None
        return AuthorizePayment(str(order_id), amount, currency, checked)
    _no_problems(problems)
    return cls(str(order_id))


def _item(item: OrderItem) -> dict[str, int]:
    return {"product_id": item.product_id, "quantity": item.quantity}


def _no_problems(problems: list[str]) -> None:
    if problems:
        raise WireError(validation.bounded(problems))


# --- replies ---


def reply_to_http(reply: Reply) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a participant's reply."""
    if reply.ok:
        return 200, {"ok": True}
    return (503 if reply.transient else 422), {"ok": False, "reason": reply.reason}


def reply_from_http(status: int, body: bytes, correlation: Any) -> Reply | None:
    """The saga's answer to an HTTP answer: 200 with `{"ok": true}` done (any other 200, and
    any other 2xx or 3xx, None: not the protocol's answer); 422 rejected with its reason; any other
    4xx (400, 401, 404, 413, 429) and 503 unavailable: this attempt was refused before any
    effect, so it is retried - not a final rejection, which would also declare that no earlier
    attempt (one that timed out, say) had an effect; any other 5xx None - no answer: the outcome
    is unknown, so the attempt times out and is retried, and compensated on rollback."""
    reason = None
    parsed: Any = None
    try:
        parsed = json.loads(body) if body else None
        if isinstance(parsed, dict) and isinstance(parsed.get("reason"), str):
            reason = parsed["reason"][:200]
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    if status == 200:
        # Only the protocol's own success counts: a 200 from anything else (a proxy's page,
        # another application) says nothing of the command - an unknown outcome.
        ok = isinstance(parsed, dict) and parsed.get("ok") is True
        return Reply.success(correlation) if ok else None
    if status < 400:
        return None  # 202, a redirect: not the protocol's answer; it may have had an effect
    if status == 422:
        return Reply.rejected(correlation, reason or "rejected")
    if status >= 500 and status != 503:
        return None
    return Reply.unavailable(correlation, f"http_{status}" + (f": {reason}" if reason else ""))


# --- views ---


def stock_to_json(stock: Mapping[int, StockView]) -> dict[str, Any]:
    return {
        "products": [
            {"product_id": p, "on_hand": v.on_hand, "reserved": v.reserved, "received": v.received}
            for p, v in sorted(stock.items())
        ]
    }


def stock_from_json(body: Mapping[str, Any]) -> dict[int, StockView]:
    return {
        int(p["product_id"]): StockView(int(p["on_hand"]), int(p["reserved"]), int(p["received"]))
        for p in body["products"]
    }


def payments_to_json(payments: Mapping[str, PaymentView]) -> dict[str, Any]:
    return {"payments": {o: {"state": v.state, "amount": str(v.amount)} for o, v in payments.items()}}


def payments_from_json(body: Mapping[str, Any]) -> dict[str, PaymentView]:
    return {o: PaymentView(v["state"], Decimal(v["amount"])) for o, v in body["payments"].items()}


def captures_to_json(captures: CapturesView) -> dict[str, Any]:
    return {"payments": captures.payments, "amounts": {c: str(a) for c, a in captures.amounts.items()}}


def captures_from_json(body: Mapping[str, Any]) -> CapturesView:
    return CapturesView(int(body["payments"]), {c: Decimal(a) for c, a in body["amounts"].items()})
