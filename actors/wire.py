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
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from saga_actors.actors.inventory import CommitStock, ReleaseStock, ReserveStock, StockProducts, StockView
from saga_actors.actors.payment import (
    AuthorizePayment,
    CapturePayment,
    CapturesView,
    PaymentView,
    VoidPayment,
)
from saga_actors.actors.validation import OrderItem, PaymentCard
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
MAX_ID_LENGTH = 200
MAX_ITEMS = 100

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
_CURRENCY = re.compile(r"[A-Z]{3}")


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


def decode_command(service: str, operation: str, body: object) -> Any:
    """The command a request carries. Raises KeyError for an unknown operation and `WireError`
    naming each problem of a malformed body (the card number is never quoted)."""
    cls = OPERATIONS[(service, operation)]
    if not isinstance(body, dict):
        raise WireError([f"the body must be a JSON object, got {type(body).__name__}"])
    problems: list[str] = []
    if cls is StockProducts:
        stock = _items(body, "stock", problems)
        _no_problems(problems)
        return StockProducts(tuple(sorted((i.product_id, i.quantity) for i in stock)))
    order_id = body.get("order_id")
    if not isinstance(order_id, str) or not 0 < len(order_id) <= MAX_ID_LENGTH:
        problems.append(f"order_id must be a string of 1 to {MAX_ID_LENGTH} characters")
    if cls is ReserveStock:
        items = _items(body, "items", problems)
        _no_problems(problems)
        return ReserveStock(str(order_id), tuple(items))
    if cls is AuthorizePayment:
        amount = _amount(body.get("amount"), problems)
        currency = body.get("currency")
        if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
            problems.append("currency must be three capital letters")
        card = _card(body.get("card"), problems)
        _no_problems(problems)
        assert amount is not None and card is not None
        return AuthorizePayment(str(order_id), amount, str(currency), card)
    _no_problems(problems)
    return cls(str(order_id))


def _item(item: OrderItem) -> dict[str, int]:
    return {"product_id": item.product_id, "quantity": item.quantity}


def _items(body: dict[str, Any], name: str, problems: list[str]) -> list[OrderItem]:
    raw = body.get(name)
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_ITEMS:
        problems.append(f"{name} must be a list of 1 to {MAX_ITEMS} items")
        return []
    items = []
    for n, entry in enumerate(raw):
        product = entry.get("product_id") if isinstance(entry, dict) else None
        quantity = entry.get("quantity") if isinstance(entry, dict) else None
        if not (
            isinstance(product, int)
            and _whole(product, 0)
            and isinstance(quantity, int)
            and _whole(quantity, 1)
        ):
            problems.append(f"{name}[{n}] must be {{product_id: int >= 0, quantity: int >= 1}}")
            continue
        items.append(OrderItem(product, quantity))
    return items


def _whole(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and least <= value < 2**63


def _amount(value: object, problems: list[str]) -> Decimal | None:
    try:
        amount = Decimal(value) if isinstance(value, str) and len(value) <= 32 else None
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount <= 0:
        problems.append('amount must be a positive decimal string, e.g. "19.98"')
        return None
    return amount


def _card(value: object, problems: list[str]) -> PaymentCard | None:
    if not isinstance(value, dict):
        problems.append("card must be an object {number, expiry, cvv}")
        return None
    number, expiry, cvv = value.get("number"), value.get("expiry"), value.get("cvv")
    if not isinstance(number, str) or not number.isdigit() or not 12 <= len(number) <= 19:
        problems.append("card.number must be 12 to 19 digits")  # never quoted
    if not isinstance(expiry, str) or not re.fullmatch(r"\d\d/\d\d", expiry):
        problems.append("card.expiry must be MM/YY")
    if cvv is not None and (not isinstance(cvv, str) or not re.fullmatch(r"\d{3,4}", cvv)):
        problems.append("card.cvv must be 3 or 4 digits or null")
    if problems:
        return None
    return PaymentCard(str(number), str(expiry), cvv if isinstance(cvv, str) else None)


def _no_problems(problems: list[str]) -> None:
    if problems:
        raise WireError(problems)


# --- replies ---


def reply_to_http(reply: Reply) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a participant's reply."""
    if reply.ok:
        return 200, {"ok": True}
    return (503 if reply.transient else 422), {"ok": False, "reason": reply.reason}


def reply_from_http(status: int, body: bytes, correlation: Any) -> Reply | None:
    """The saga's answer to an HTTP answer: 200 done; 422 rejected with its reason; any other
    4xx (400, 401, 404, 413, 429) and 503 unavailable: this attempt was refused before any
    effect, so it is retried - not a final rejection, which would also declare that no earlier
    attempt (one that timed out, say) had an effect; any other 5xx None - no answer: the outcome
    is unknown, so the attempt times out and is retried, and compensated on rollback."""
    reason = None
    try:
        parsed = json.loads(body) if body else None
        if isinstance(parsed, dict) and isinstance(parsed.get("reason"), str):
            reason = parsed["reason"][:200]
    except (ValueError, UnicodeDecodeError):
        pass
    if status == 200:
        return Reply.success(correlation)
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
