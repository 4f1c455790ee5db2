"""Turning a request dict into a validated `OrderRequest`, or naming every problem.

Validation happens in the caller's thread, before any message is sent, so a
bad request changes nothing. `validate_order` returns an `OrderRequest` or
raises `InvalidOrder` - never another exception, whatever it is given - and
the caller's thread settings (its decimal context) do not change the result.

What is accepted (digits are ASCII digits 0-9 everywhere; other Unicode
digits, underscores and Unicode whitespace are refused):

- ``user_id``: an int (not a bool) from 1 to 2**63-1 (a signed 64-bit id);
  ``items[i].product_id``: an int from 0 to 2**63-1; ``items[i].quantity``:
  an int from 1 to `MAX_QUANTITY`; 1 to `MAX_ITEMS` items, product ids distinct.
- ``order_id``: 1 to `MAX_ORDER_ID_LENGTH` ASCII letters, digits and ``. _ : -``,
  starting with a letter or digit.
- ``payment_info.amount``: an int, a finite float (taken at its shortest repr,
  so 19.98 is 19.98), a finite Decimal, or a string of at most
  `MAX_AMOUNT_LENGTH` characters: an optional sign, digits with an optional
  decimal point and fraction, an optional exponent (``[eE][+-]?digits``),
  with optional surrounding ASCII whitespace (space, tab, CR, LF, FF, VT),
  which is ignored. The value must be positive, at most `MAX_AMOUNT`, and a
  whole number of cents ("19.980" is 19.98, "19.985" is refused).
- ``payment_info.card_number``: 12 to 19 digits, passing the Luhn check;
  spaces and hyphens between them are ignored.
- ``payment_info.expiry``: "MM/YY", month 01 to 12.
- ``payment_info.cvv`` (optional; None means absent): 3 or 4 digits.
- ``payment_info.currency`` (optional, default "USD"): three capital letters A-Z.

Error messages never quote the card number or the CVV, wherever they were
put, and never a run of 12 or more digits (spaces and hyphens between them
included): such runs read `DIGITS_MASK`. A value is shown shortened, and a
container or other object only by its type name. At most `MAX_PROBLEMS`
problems are listed (the last one says how many more there were), and at
most `MAX_UNEXPECTED_FIELDS` unexpected field names per mapping.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DecimalException,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)
from typing import Any

from saga_actors.actors.errors import InvalidOrder

__all__ = [
    "DIGITS_MASK",
    "MAX_AMOUNT",
    "MAX_AMOUNT_LENGTH",
    "MAX_ID",
    "MAX_ITEMS",
    "MAX_ORDER_ID_LENGTH",
    "MAX_PROBLEMS",
    "MAX_QUANTITY",
    "MAX_UNEXPECTED_FIELDS",
    "OrderItem",
    "OrderRequest",
    "PaymentCard",
    "bounded",
    "check_items",
    "check_order_id",
    "check_payment",
    "luhn_valid",
    "show_field",
    "validate_order",
]

MAX_ITEMS = 100
MAX_ORDER_ID_LENGTH = 64
MAX_QUANTITY = 1_000_000
MAX_ID = 2**63 - 1  # ids are signed 64-bit integers
MAX_AMOUNT = Decimal("1000000000.00")
MAX_AMOUNT_LENGTH = 40
MAX_PROBLEMS = 100
MAX_UNEXPECTED_FIELDS = 10
DIGITS_MASK = "<12+ digits>"
CENT = Decimal("0.01")
_MAX_WHOLE_AMOUNT = 1_000_000_000

# Every Decimal operation here runs in this context, not the caller's.
_DECIMAL_CONTEXT = Context(
    prec=28,
    rounding=ROUND_HALF_EVEN,
    Emin=-999_999,
    Emax=999_999,
    capitals=1,
    clamp=0,
    flags=[],
    traps=[InvalidOperation, DivisionByZero, Overflow],
)

_ORDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*", re.ASCII)
_EXPIRY = re.compile(r"([0-9]{2})/([0-9]{2})", re.ASCII)
_CURRENCY = re.compile(r"[A-Z]{3}", re.ASCII)
_CVV = re.compile(r"[0-9]{3,4}", re.ASCII)
_CARD_DIGITS = re.compile(r"[0-9]{12,19}", re.ASCII)
_MAX_CARD_LENGTH = 64  # with separators
_WS = r"[ \t\n\r\f\v]*"
_AMOUNT = re.compile(_WS + r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)" + _WS, re.ASCII)
_NOT_FINITE = re.compile(_WS + r"[+-]?(?:s?nan[0-9]*|inf|infinity)" + _WS, re.ASCII | re.IGNORECASE)
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_ANY_DIGIT = re.compile(r"\d")  # Unicode digits too: masking errs on the safe side
_DIGIT_RUN = re.compile(r"\d(?:[\s-]*\d){11,}")
_SHOW_LENGTH = 40
_MAX_FIELDS_SCANNED = 1000

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
        with localcontext(_DECIMAL_CONTEXT):
            amount = str(self.amount)
        content = {
            "user_id": self.user_id,
            "items": sorted((i.product_id, i.quantity) for i in self.items),
            "amount": amount,
            "currency": self.currency,
            "expiry": self.card.expiry,
            "card_last4": self.card.last4,
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn check (False for anything else)."""
    if not isinstance(digits, str) or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def validate_order(request: Any) -> OrderRequest:
    """Return the validated order, or raise InvalidOrder naming every problem.

    Never raises anything else, for any input: a mapping whose own methods
    fail is refused as unreadable.
    """
    try:
        with localcontext(_DECIMAL_CONTEXT):
            problems, order = _validate(request)
    except Exception as error:  # a hostile Mapping, list or str subclass: its code failed
        problems, order = [f"request: could not be read ({_type_name(error)})"], None
    if order is None or problems:
        raise InvalidOrder(_bounded(problems or ["request: invalid"]))
    return order


def _validate(request: Any) -> tuple[list[str], OrderRequest | None]:
    if not isinstance(request, Mapping):
        return [f"request: must be a mapping, got {_type_name(request)}"], None
    problems: list[str] = []
    _check_fields(request, "", _ORDER_FIELDS, (), problems)

    user_id = None
    if "user_id" in request:
        raw_user = request.get("user_id")
        user_id = _int_in(raw_user, 1, MAX_ID)
        if user_id is None:
            problems.append(f"user_id: must be a positive integer below 2**63, got {_show(raw_user)}")

    order_id = None
    if "order_id" in request:
        order_id, problem = _order_id(request.get("order_id"))
        if problem:
            problems.append(problem)

    items = _validate_items(request.get("items"), problems) if "items" in request else ()

    card = None
    amount, currency = Decimal(0), "USD"
    if "payment_info" in request:
        payment = request.get("payment_info")
        if not isinstance(payment, Mapping):
            problems.append(f"payment_info: must be a mapping, got {_type_name(payment)}")
        else:
            card, amount, currency = _validate_payment(payment, problems)

    if problems or card is None or user_id is None or order_id is None:
        return problems, None
    return problems, OrderRequest(order_id, user_id, items, amount, currency, card)


def _check_fields(
    mapping: Mapping[Any, Any],
    prefix: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    problems: list[str],
) -> None:
    problems += [f"{prefix}{name}: missing" for name in required if name not in mapping]
    unexpected, scanned = 0, 0
    # A dict is read whole; another Mapping is user code, which may iterate forever.
    names = mapping if type(mapping) is dict else itertools.islice(mapping, _MAX_FIELDS_SCANNED)
    for name in names:
        scanned += 1
        if isinstance(name, str) and str.__str__(name) in required + optional:
            continue
        unexpected += 1
        if unexpected <= MAX_UNEXPECTED_FIELDS:
            problems.append(f"{prefix}{_field_name(name)}: unexpected field")
    if unexpected > MAX_UNEXPECTED_FIELDS:
        more = unexpected - MAX_UNEXPECTED_FIELDS
        plus = "+" if type(mapping) is not dict and scanned == _MAX_FIELDS_SCANNED else ""
        where = prefix.rstrip(".") or "request"
        problems.append(f"{where}: {more}{plus} more unexpected fields")


# --- the rules, for other front doors (the services' wire protocol) ---


def check_order_id(raw: Any) -> tuple[str | None, str | None]:
    """(the order id, None), or (None, the problem): the rules `validate_order` applies."""
    return _order_id(raw)


def check_items(raw: Any, problems: list[str], name: str = "items") -> tuple[OrderItem, ...]:
    """The items of a request's list `name`, appending each problem to `problems`."""
    found: list[str] = []
    items = _validate_items(raw, found)
    problems += [name + p[len("items") :] if p.startswith("items") else p for p in found]
    return items


def check_payment(payment: Mapping[Any, Any], problems: list[str]) -> tuple[PaymentCard | None, Decimal, str]:
    """(card, amount, currency) of a `payment_info`-shaped mapping, appending each problem to
    `problems` (named `payment_info.<field>`; a card number is never quoted)."""
    payment = {k: v for k, v in payment.items() if v is not None or k not in ("cvv", "currency")}
    return _validate_payment(payment, problems)


def show_field(name: object) -> str:
    """A field name safe to quote in an error message."""
    return _field_name(name)


def bounded(problems: list[str]) -> list[str]:
    """At most 100 problems, with every run of 12 or more digits masked."""
    return _bounded(problems)


def _order_id(raw: Any) -> tuple[str | None, str | None]:
    if not isinstance(raw, str):
        return None, f"order_id: must be a string, got {_type_name(raw)}"
    order_id = str.__str__(raw)
    if not order_id:
        return None, "order_id: must not be empty"
    if len(order_id) > MAX_ORDER_ID_LENGTH:
        return None, f"order_id: longer than {MAX_ORDER_ID_LENGTH} characters ({len(order_id)})"
    if not _ORDER_ID.fullmatch(order_id):
        return None, (
            "order_id: may hold only letters, digits and . _ : - (and must start with a letter or digit)"
        )
    return order_id, None


def _validate_items(raw: Any, problems: list[str]) -> tuple[OrderItem, ...]:
    if isinstance(raw, list):
        entries: list[Any] = list.__getitem__(raw, slice(0, MAX_ITEMS + 1))
        count = list.__len__(raw)
    elif isinstance(raw, tuple):
        entries = list(tuple.__getitem__(raw, slice(0, MAX_ITEMS + 1)))
        count = tuple.__len__(raw)
    else:
        problems.append(f"items: must be a list, got {_type_name(raw)}")
        return ()
    if not count:
        problems.append("items: must not be empty")
        return ()
    if count > MAX_ITEMS:
        problems.append(f"items: at most {MAX_ITEMS} items per order, got {count}")
        return ()
    result = []
    first_index: dict[int, int] = {}
    for index, item in enumerate(entries):
        path = f"items[{index}]"
        if not isinstance(item, Mapping):
            problems.append(f"{path}: must be a mapping, got {_type_name(item)}")
            continue
        _check_fields(item, f"{path}.", _ITEM_FIELDS, (), problems)
        product_id = quantity = None
        if "product_id" in item:
            raw_product = item.get("product_id")
            product_id = _int_in(raw_product, 0, MAX_ID)
            if product_id is None:
                problems.append(
                    f"{path}.product_id: must be a non-negative integer below 2**63, got {_show(raw_product)}"
                )
        if "quantity" in item:
            raw_quantity = item.get("quantity")
            quantity = _int_in(raw_quantity, 1, MAX_QUANTITY)
            if quantity is None:
                problems.append(
                    f"{path}.quantity: must be an integer from 1 to {MAX_QUANTITY}, got {_show(raw_quantity)}"
                )
        if product_id is not None and quantity is not None:
            if product_id in first_index:
                problems.append(
                    f"{path}.product_id: {_show(product_id)} is already in items[{first_index[product_id]}]"
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
    expiry = _expiry(payment, problems)
    amount = _amount(payment, problems)
    currency = _currency(payment, problems)
    cvv = _cvv(payment, problems)
    if number is None or expiry is None or currency is None or problems:
        return None, amount, "USD"
    return PaymentCard(number, expiry, cvv), amount, currency


def _card_number(payment: Mapping[Any, Any], problems: list[str]) -> str | None:
    # Never shows the value: whatever is here may be a card number.
    if "card_number" not in payment:
        return None
    raw = payment.get("card_number")
    if not isinstance(raw, str):
        problems.append(f"payment_info.card_number: must be a string, got {_type_name(raw)}")
        return None
    text = str.__str__(raw)
    digits = text.replace(" ", "").replace("-", "") if len(text) <= _MAX_CARD_LENGTH else ""
    if not _CARD_DIGITS.fullmatch(digits):
        problems.append("payment_info.card_number: must be 12 to 19 digits")
        return None
    if not luhn_valid(digits):
        problems.append("payment_info.card_number: fails the Luhn check (mistyped?)")
        return None
    return digits


def _expiry(payment: Mapping[Any, Any], problems: list[str]) -> str | None:
    if "expiry" not in payment:
        return None
    raw = payment.get("expiry")
    expiry = str.__str__(raw) if isinstance(raw, str) else None
    match = _EXPIRY.fullmatch(expiry) if expiry is not None else None
    if expiry is None or match is None or not 1 <= int(match.group(1)) <= 12:
        problems.append(f"payment_info.expiry: must be MM/YY, got {_show(raw)}")
        return None
    return expiry


def _currency(payment: Mapping[Any, Any], problems: list[str]) -> str | None:
    raw = payment.get("currency", "USD")
    currency = str.__str__(raw) if isinstance(raw, str) else None
    if currency is None or not _CURRENCY.fullmatch(currency):
        problems.append(f"payment_info.currency: must be a three-letter code like 'USD', got {_show(raw)}")
        return None
    return currency


def _cvv(payment: Mapping[Any, Any], problems: list[str]) -> str | None:
    # Never shows the value.
    raw = payment.get("cvv")
    if raw is None:
        return None
    cvv = str.__str__(raw) if isinstance(raw, str) else None
    if cvv is None or not _CVV.fullmatch(cvv):
        problems.append("payment_info.cvv: must be a string of 3 or 4 digits")
        return None
    return cvv


def _amount(payment: Mapping[Any, Any], problems: list[str]) -> Decimal:
    if "amount" not in payment:
        return Decimal(0)
    raw = payment.get("amount")
    amount = _parse_amount(raw)
    if isinstance(amount, str):
        problem = amount
    elif not amount.is_finite():
        problem = f"must be finite, got {_show(raw)}"
    elif amount <= 0:
        problem = f"must be positive, got {_show(raw)}"
    elif amount > MAX_AMOUNT:
        problem = f"at most {MAX_AMOUNT}, got {_show(raw)}"
    elif amount != amount.quantize(CENT):
        problem = f"at most two decimal places, got {_show(raw)}"
    else:
        return amount.quantize(CENT)
    problems.append(f"payment_info.amount: {problem}")
    return Decimal(0)


def _parse_amount(raw: Any) -> Decimal | str:
    """The amount as a Decimal (maybe out of range), or why it is not one."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str, Decimal)):
        return f"must be a number or a decimal string, got {_type_name(raw)}"
    if isinstance(raw, int):
        # Clamped first: beyond the range only the side matters, whatever the size.
        return Decimal(min(max(int.__index__(raw), -1), _MAX_WHOLE_AMOUNT + 1))
    if isinstance(raw, float):
        value = float.__float__(raw)
        if not math.isfinite(value):
            return f"must be finite, got {_show(value)}"
        # The shortest repr, so that 19.98 stays 19.98.
        return Decimal(float.__repr__(value))
    if isinstance(raw, Decimal):
        return Decimal(raw)  # a plain Decimal, whatever subclass came in
    text = str.__str__(raw)
    if len(text) > MAX_AMOUNT_LENGTH:
        return f"longer than {MAX_AMOUNT_LENGTH} characters ({len(text)})"
    if _NOT_FINITE.fullmatch(text):
        return f"must be finite, got {_show(text)}"
    match = _AMOUNT.fullmatch(text)
    if match is None:
        return f"not a number (write it like '19.98'): {_show(text)}"
    try:
        return Decimal(match.group(1))
    except DecimalException:  # an exponent beyond what Decimal can hold
        return f"out of range, got {_show(text)}"


def _int_in(value: object, low: int, high: int) -> int | None:
    """`value` as a plain int if it is an int (not a bool) in [low, high], else None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    number = int.__index__(value)  # a plain int, whatever subclass came in
    return number if low <= number <= high else None


def _show(value: object) -> str:
    """A short rendering of a user-supplied value, safe for an error message.

    Never recursive, never converts an unbounded number to text, and never
    copies more than a few dozen characters of a string; a value whose
    rendering would hold 12 or more digits reads `DIGITS_MASK`.
    """
    if value is None or isinstance(value, bool):
        return "None" if value is None else ("True" if value else "False")
    if isinstance(value, int):
        if int.bit_length(value) > 64:
            return DIGITS_MASK
        text = int.__repr__(value)
    elif isinstance(value, float):
        text = float.__repr__(value)
    elif isinstance(value, str):
        raw = str.__str__(value)
        if len(raw) > _SHOW_LENGTH:
            text = repr(raw[: _SHOW_LENGTH - 3]) + "..."
        else:
            text = repr(raw)
    elif isinstance(value, Decimal):
        if len(Decimal.as_tuple(value).digits) >= 12:
            return DIGITS_MASK
        text = Decimal.__repr__(value)
    else:
        return _type_name(value)
    return DIGITS_MASK if len(_ANY_DIGIT.findall(text)) >= 12 else text


def _type_name(value: object) -> str:
    try:
        name = type(value).__name__  # a metaclass may make even this fail
    except Exception:
        return "object"
    if not isinstance(name, str) or len(_ANY_DIGIT.findall(name[:_SHOW_LENGTH])) >= 12:
        return "object"
    return name if len(name) <= _SHOW_LENGTH else name[: _SHOW_LENGTH - 3] + "..."


def _field_name(name: object) -> str:
    if isinstance(name, str):
        text = str.__str__(name)
        if len(text) <= _SHOW_LENGTH and _PLAIN_NAME.fullmatch(text):
            return DIGITS_MASK if len(_ANY_DIGIT.findall(text)) >= 12 else text
    return _show(name)


def _bounded(problems: list[str]) -> list[str]:
    """At most MAX_PROBLEMS problems, with every long digit run masked."""
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - (MAX_PROBLEMS - 1)
        problems = [*problems[: MAX_PROBLEMS - 1], f"request: {more} more problems not listed"]
    return [_DIGIT_RUN.sub(DIGITS_MASK, problem) for problem in problems]
