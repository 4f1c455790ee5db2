"""Turning a request dict into a validated `OrderRequest`, or naming every problem.

Validation happens in the caller's thread, before any message is sent, so a
bad request changes nothing. Sizes are bounded so a huge request is refused
rather than processed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TypeGuard

from saga_actors.actors.errors import InvalidOrder

__all__ = [
    "MAX_AMOUNT",
    "MAX_ITEMS",
    "MAX_ORDER_ID_LENGTH",
    "MAX_QUANTITY",
    "OrderItem",
    "OrderRequest",
    "PaymentCard",
    "luhn_valid",
    "validate_order",
]

MAX_ITEMS = 100
MAX_ORDER_ID_LENGTH = 64
MAX_QUANTITY = 1_000_000
MAX_AMOUNT = Decimal("1000000000.00")
CENT = Decimal("0.01")

_ORDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_EXPIRY = re.compile(r"(\d{2})/(\d{2})")
_CURRENCY = re.compile(r"[A-Z]{3}")
_CVV = re.compile(r"\d{3,4}")

_ORDER_FIELDS = ("user_id", "order_id", "items", "payment_info")
_ITEM_FIELDS = ("product_id", "quantity")
_PAYMENT_FIELDS = ("card_number", "expiry", "amount")
_PAYMENT_OPTIONAL = ("cvv", "currency")


@dataclass(frozen=True, slots=True)
class PaymentCard:
    """Card details, kept in memory only; the repr shows the last four digits."""

    number: str = field(repr=False)
    expiry: str
    cvv: str | None = field(default=None, repr=False)

    @property
    def last4(self) -> str:
        return self.number[-4:]

    def __repr__(self) -> str:
        return f"PaymentCard(number='****{self.last4}', expiry={self.expiry!r})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class OrderItem:
    product_id: int
    quantity: int


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A validated order: plain, typed, and safe to log."""

    order_id: str
    user_id: int
    items: tuple[OrderItem, ...]
    amount: Decimal
    currency: str
    card: PaymentCard

    def fingerprint(self) -> str:
        """What makes two requests for one order id "the same order".

        It covers everything but the full card number and CVV, which are
        never stored: the card is represented by its last four digits.
        """
        content = {
            "user_id": self.user_id,
            "items": sorted((i.product_id, i.quantity) for i in self.items),
            "amount": str(self.amount),
            "currency": self.currency,
            "expiry": self.card.expiry,
            "card_last4": self.card.last4,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def validate_order(request: Any) -> OrderRequest:
    """Return the validated order, or raise InvalidOrder naming every problem."""
    if not isinstance(request, Mapping):
        raise InvalidOrder([f"request: must be a mapping, got {type(request).__name__}"])
    problems: list[str] = []
    _check_fields(request, "", _ORDER_FIELDS, (), problems)

    user_id = request.get("user_id")
    if "user_id" in request and not (_is_int(user_id) and user_id > 0):
        problems.append(f"user_id: must be a positive integer, got {_show(user_id)}")

    order_id = request.get("order_id")
    if "order_id" in request:
        problems += _order_id_problems(order_id)

    items = _validate_items(request.get("items"), problems) if "items" in request else ()

    payment = request.get("payment_info")
    card = None
    amount, currency = Decimal(0), "USD"
    if "payment_info" in request:
        if not isinstance(payment, Mapping):
            problems.append(f"payment_info: must be a mapping, got {type(payment).__name__}")
        else:
            card, amount, currency = _validate_payment(payment, problems)

    if problems or card is None or not _is_int(user_id) or not isinstance(order_id, str):
        raise InvalidOrder(problems or ["request: invalid"])
    return OrderRequest(order_id, user_id, items, amount, currency, card)


def _check_fields(
    mapping: Mapping[Any, Any],
    prefix: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    problems: list[str],
) -> None:
    problems += [f"{prefix}{name}: missing" for name in required if name not in mapping]
    problems += [
        f"{prefix}{name}: unexpected field"
        for name in mapping
        if name not in required and name not in optional
    ]


def _order_id_problems(order_id: Any) -> list[str]:
    if not isinstance(order_id, str):
        return [f"order_id: must be a string, got {type(order_id).__name__}"]
    if not order_id:
        return ["order_id: must not be empty"]
    if len(order_id) > MAX_ORDER_ID_LENGTH:
        return [f"order_id: longer than {MAX_ORDER_ID_LENGTH} characters ({len(order_id)})"]
    if not _ORDER_ID.fullmatch(order_id):
        return ["order_id: may hold only letters, digits and . _ : - (and must start with a letter or digit)"]
    return []


def _validate_items(items: Any, problems: list[str]) -> tuple[OrderItem, ...]:
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, (list, tuple)):
        problems.append(f"items: must be a list, got {type(items).__name__}")
        return ()
    if not items:
        problems.append("items: must not be empty")
        return ()
    if len(items) > MAX_ITEMS:
        problems.append(f"items: at most {MAX_ITEMS} items per order, got {len(items)}")
        return ()
    result = []
    first_index: dict[int, int] = {}
    for index, item in enumerate(items):
        path = f"items[{index}]"
        if not isinstance(item, Mapping):
            problems.append(f"{path}: must be a mapping, got {type(item).__name__}")
            continue
        _check_fields(item, f"{path}.", _ITEM_FIELDS, (), problems)
        product_id, quantity = item.get("product_id"), item.get("quantity")
        good_product = _is_int(product_id) and product_id >= 0
        good_quantity = _is_int(quantity) and 0 < quantity <= MAX_QUANTITY
        if "product_id" in item and not good_product:
            problems.append(f"{path}.product_id: must be a non-negative integer, got {_show(product_id)}")
        if "quantity" in item and not good_quantity:
            problems.append(
                f"{path}.quantity: must be an integer from 1 to {MAX_QUANTITY}, got {_show(quantity)}"
            )
        if _is_int(product_id) and good_product and _is_int(quantity) and good_quantity:
            if product_id in first_index:
                problems.append(
                    f"{path}.product_id: {product_id} is already in items[{first_index[product_id]}]"
                )
                continue
            first_index[product_id] = index
            result.append(OrderItem(product_id, quantity))
    return tuple(result)


def _validate_payment(
    payment: Mapping[Any, Any], problems: list[str]
) -> tuple[PaymentCard | None, Decimal, str]:
    _check_fields(payment, "payment_info.", _PAYMENT_FIELDS, _PAYMENT_OPTIONAL, problems)
    number = _card_number(payment, problems)
    expiry = payment.get("expiry")
    if "expiry" in payment:
        match = _EXPIRY.fullmatch(expiry) if isinstance(expiry, str) else None
        if match is None or not 1 <= int(match.group(1)) <= 12:
            problems.append(f"payment_info.expiry: must be MM/YY, got {_show(expiry)}")
    amount = _amount(payment, problems)
    currency = payment.get("currency", "USD")
    if not (isinstance(currency, str) and _CURRENCY.fullmatch(currency)):
        problems.append(
            f"payment_info.currency: must be a three-letter code like 'USD', got {_show(currency)}"
        )
    cvv = payment.get("cvv")
    if cvv is not None and not (isinstance(cvv, str) and _CVV.fullmatch(cvv)):
        problems.append("payment_info.cvv: must be a string of 3 or 4 digits")
    if number is None or problems or not isinstance(expiry, str):
        return None, amount, str(currency)
    return PaymentCard(number, expiry, cvv), amount, currency


def _card_number(payment: Mapping[Any, Any], problems: list[str]) -> str | None:
    if "card_number" not in payment:
        return None
    raw = payment["card_number"]
    if not isinstance(raw, str):
        problems.append(f"payment_info.card_number: must be a string, got {type(raw).__name__}")
        return None
    digits = raw.replace(" ", "").replace("-", "")
    if not (digits.isascii() and digits.isdigit() and 12 <= len(digits) <= 19):
        problems.append("payment_info.card_number: must be 12 to 19 digits")
        return None
    if not luhn_valid(digits):
        problems.append("payment_info.card_number: fails the Luhn check (mistyped?)")
        return None
    return digits


def _amount(payment: Mapping[Any, Any], problems: list[str]) -> Decimal:
    if "amount" not in payment:
        return Decimal(0)
    raw = payment["amount"]
    where = "payment_info.amount"
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str, Decimal)):
        problems.append(f"{where}: must be a number or a decimal string, got {type(raw).__name__}")
        return Decimal(0)
    if isinstance(raw, float) and not math.isfinite(raw):
        problems.append(f"{where}: must be finite, got {raw!r}")
        return Decimal(0)
    try:
        # str() of a float is its shortest repr, so 19.98 stays 19.98.
        amount = Decimal(str(raw).strip()) if not isinstance(raw, Decimal) else raw
    except InvalidOperation:
        problems.append(f"{where}: not a number: {_show(raw)}")
        return Decimal(0)
    if not amount.is_finite():
        problems.append(f"{where}: must be finite, got {_show(raw)}")
    elif amount <= 0:
        problems.append(f"{where}: must be positive, got {_show(raw)}")
    elif amount > MAX_AMOUNT:
        problems.append(f"{where}: at most {MAX_AMOUNT}, got {_show(raw)}")
    elif amount != amount.quantize(CENT):
        problems.append(f"{where}: at most two decimal places, got {_show(raw)}")
    else:
        return amount.quantize(CENT)
    return Decimal(0)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
