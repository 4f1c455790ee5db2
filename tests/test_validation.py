"""Input validation: every problem is named, nothing half-done, no card leaks."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from saga_actors.actors import InvalidOrder, OrderSystem
from saga_actors.actors.validation import (
    MAX_AMOUNT_LENGTH,
    MAX_ID,
    MAX_ITEMS,
    MAX_ORDER_ID_LENGTH,
    MAX_QUANTITY,
    PaymentCard,
    luhn_valid,
    validate_order,
)
from tests.conftest import APPROVED, make_request


def _with(path: str, value: object, delete: bool = False) -> dict:
    request = copy.deepcopy(make_request())
    *parents, last = path.split(".")
    target: object = request
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]  # type: ignore[index]
    key = int(last) if last.isdigit() else last
    if delete:
        del target[key]  # type: ignore[union-attr]
    else:
        target[key] = value  # type: ignore[index]
    return request


INVALID = [
    # (description, request, fragment expected in the message)
    ("not a mapping", ["ord-1"], "request: must be a mapping"),
    ("missing user_id", _with("user_id", None, delete=True), "user_id: missing"),
    ("missing payment_info", _with("payment_info", None, delete=True), "payment_info: missing"),
    ("unexpected field", _with("coupon", "X"), "coupon: unexpected field"),
    ("bool user_id", _with("user_id", True), "user_id: must be a positive integer"),
    ("zero user_id", _with("user_id", 0), "user_id: must be a positive integer"),
    ("string user_id", _with("user_id", "42"), "user_id: must be a positive integer"),
    ("empty order_id", _with("order_id", ""), "order_id: must not be empty"),
    ("long order_id", _with("order_id", "x" * (MAX_ORDER_ID_LENGTH + 1)), "order_id: longer than"),
    ("int order_id", _with("order_id", 7), "order_id: must be a string"),
    ("order_id with spaces", _with("order_id", "a b"), "order_id: may hold only"),
    ("empty items", _with("items", []), "items: must not be empty"),
    ("items not a list", _with("items", {"product_id": 1}), "items: must be a list"),
    (
        "too many items",
        _with("items", [{"product_id": i, "quantity": 1} for i in range(MAX_ITEMS + 1)]),
        f"at most {MAX_ITEMS} items",
    ),
    ("item not a mapping", _with("items", [5]), "items[0]: must be a mapping"),
    ("zero quantity", _with("items.0.quantity", 0), "items[0].quantity: must be an integer"),
    ("negative quantity", _with("items.0.quantity", -3), "items[0].quantity"),
    ("float quantity", _with("items.0.quantity", 1.5), "items[0].quantity"),
    ("bool quantity", _with("items.0.quantity", True), "items[0].quantity"),
    ("string product_id", _with("items.0.product_id", "101"), "items[0].product_id"),
    ("bool product_id", _with("items.0.product_id", False), "items[0].product_id"),
    ("missing quantity", _with("items.0.quantity", None, delete=True), "items[0].quantity: missing"),
    (
        "duplicate product",
        _with("items", [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 2}]),
        "items[1].product_id: 1 is already in items[0]",
    ),
    ("zero amount", _with("payment_info.amount", 0), "payment_info.amount: must be positive"),
    ("negative amount", _with("payment_info.amount", "-1.00"), "payment_info.amount: must be positive"),
    ("NaN amount", _with("payment_info.amount", float("nan")), "payment_info.amount: must be finite"),
    ("NaN string amount", _with("payment_info.amount", "NaN"), "payment_info.amount: must be finite"),
    ("infinite amount", _with("payment_info.amount", float("inf")), "payment_info.amount: must be finite"),
    ("Infinity string", _with("payment_info.amount", "Infinity"), "payment_info.amount: must be finite"),
    ("non-numeric amount", _with("payment_info.amount", "twelve"), "payment_info.amount: not a number"),
    ("three decimals", _with("payment_info.amount", "1.005"), "at most two decimal places"),
    ("float with many decimals", _with("payment_info.amount", 0.1 + 0.2), "at most two decimal places"),
    ("huge amount", _with("payment_info.amount", "1e40"), "payment_info.amount: at most"),
    ("bool amount", _with("payment_info.amount", True), "payment_info.amount: must be a number"),
    ("list amount", _with("payment_info.amount", [1]), "payment_info.amount: must be a number"),
    ("short card", _with("payment_info.card_number", "42424242424"), "card_number: must be 12 to 19 digits"),
    ("long card", _with("payment_info.card_number", "4" * 20), "card_number: must be 12 to 19 digits"),
    ("letters in card", _with("payment_info.card_number", "4242abcd42424242"), "must be 12 to 19 digits"),
    ("int card", _with("payment_info.card_number", 4242424242424242), "card_number: must be a string"),
    ("luhn failure", _with("payment_info.card_number", "4242424242424241"), "fails the Luhn check"),
    ("expiry format", _with("payment_info.expiry", "2030-12"), "payment_info.expiry: must be MM/YY"),
    ("expiry month 13", _with("payment_info.expiry", "13/30"), "payment_info.expiry: must be MM/YY"),
    ("expiry month 00", _with("payment_info.expiry", "00/30"), "payment_info.expiry: must be MM/YY"),
    ("bad cvv", _with("payment_info.cvv", "12"), "payment_info.cvv"),
    ("bad currency", _with("payment_info.currency", "dollars"), "payment_info.currency"),
    # Bounded numbers: ids are signed 64-bit, and an int of any size is refused, not echoed.
    ("user_id 2**63", _with("user_id", MAX_ID + 1), "user_id: must be a positive integer below 2**63"),
    ("user_id 10**5000", _with("user_id", 10**5000), "user_id: must be a positive integer"),
    ("user_id -10**5000", _with("user_id", -(10**5000)), "user_id: must be a positive integer"),
    ("product_id -1", _with("items.0.product_id", -1), "items[0].product_id: must be a non-negative"),
    ("product_id 2**63", _with("items.0.product_id", MAX_ID + 1), "items[0].product_id: must be"),
    ("product_id 10**5000", _with("items.0.product_id", 10**5000), "items[0].product_id: must be"),
    ("quantity max + 1", _with("items.0.quantity", MAX_QUANTITY + 1), "items[0].quantity: must be"),
    ("quantity 10**5000", _with("items.0.quantity", 10**5000), "items[0].quantity: must be"),
    ("amount 10**5000", _with("payment_info.amount", 10**5000), "payment_info.amount: at most"),
    ("amount -10**5000", _with("payment_info.amount", -(10**5000)), "payment_info.amount: must be positive"),
    ("amount max + 1 cent", _with("payment_info.amount", "1000000000.01"), "payment_info.amount: at most"),
    ("amount max + 1", _with("payment_info.amount", 1_000_000_001), "payment_info.amount: at most"),
    ("amount huge float", _with("payment_info.amount", 1e300), "payment_info.amount: at most"),
    (
        "amount huge Decimal",
        _with("payment_info.amount", Decimal("9" * 5000)),
        "payment_info.amount: at most",
    ),
    (
        "amount sNaN Decimal",
        _with("payment_info.amount", Decimal("sNaN")),
        "payment_info.amount: must be finite",
    ),
    ("amount -Infinity", _with("payment_info.amount", "-Infinity"), "payment_info.amount: must be finite"),
    (
        "amount exponent overflow",
        _with("payment_info.amount", "1e" + "9" * 30),
        "payment_info.amount: out of range",
    ),
    ("amount tiny", _with("payment_info.amount", "1e-999999"), "at most two decimal places"),
    ("amount negative zero", _with("payment_info.amount", "-0"), "payment_info.amount: must be positive"),
    (
        "amount too long",
        _with("payment_info.amount", "0" * MAX_AMOUNT_LENGTH + "1"),
        f"payment_info.amount: longer than {MAX_AMOUNT_LENGTH} characters",
    ),
    # Only ASCII digits where digits are expected.
    ("amount underscore", _with("payment_info.amount", "1_000"), "payment_info.amount: not a number"),
    (
        "amount Arabic-Indic",
        _with("payment_info.amount", "\u0661\u0660"),
        "payment_info.amount: not a number",
    ),
    ("amount fullwidth", _with("payment_info.amount", "\uff15"), "payment_info.amount: not a number"),
    ("amount NBSP around", _with("payment_info.amount", "\u00a05"), "payment_info.amount: not a number"),
    ("amount thousands comma", _with("payment_info.amount", "1,000"), "payment_info.amount: not a number"),
    ("amount empty", _with("payment_info.amount", ""), "payment_info.amount: not a number"),
    ("amount dot only", _with("payment_info.amount", "."), "payment_info.amount: not a number"),
    ("amount hex", _with("payment_info.amount", "0x10"), "payment_info.amount: not a number"),
    (
        "expiry Arabic-Indic",
        _with("payment_info.expiry", "\u0661\u0662/\u0663\u0660"),
        "expiry: must be MM/YY",
    ),
    (
        "expiry trailing newline",
        _with("payment_info.expiry", "12/30\n"),
        "payment_info.expiry: must be MM/YY",
    ),
    ("expiry int", _with("payment_info.expiry", 1230), "payment_info.expiry: must be MM/YY"),
    ("cvv Arabic-Indic", _with("payment_info.cvv", "\u0661\u0662\u0663"), "payment_info.cvv"),
    ("cvv int", _with("payment_info.cvv", 123), "payment_info.cvv"),
    ("card Arabic-Indic", _with("payment_info.card_number", "\u0664\u0662" * 8), "must be 12 to 19 digits"),
    ("card fullwidth", _with("payment_info.card_number", "\uff14\uff12" * 8), "must be 12 to 19 digits"),
    ("card 10 MB", _with("payment_info.card_number", "4" * 10_000_000), "must be 12 to 19 digits"),
    ("currency fullwidth", _with("payment_info.currency", "\uff35\uff33\uff24"), "payment_info.currency"),
    ("currency None", _with("payment_info.currency", None), "payment_info.currency"),
    ("currency 10**5000", _with("payment_info.currency", 10**5000), "payment_info.currency"),
]


@pytest.mark.parametrize(("description", "request_", "fragment"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_request_is_refused_naming_the_problem(description, request_, fragment):
    with pytest.raises(InvalidOrder) as raised:
        validate_order(request_)
    assert fragment in str(raised.value)
    assert any(fragment in problem for problem in raised.value.problems)


def test_every_problem_is_named_at_once():
    request = {
        "user_id": -1,
        "order_id": "",
        "items": [{"product_id": "x", "quantity": 0}],
        "payment_info": {"card_number": "1234", "expiry": "1/2", "amount": "NaN"},
    }
    with pytest.raises(InvalidOrder) as raised:
        validate_order(request)
    paths = [p.split(":")[0] for p in raised.value.problems]
    assert paths == [
        "user_id",
        "order_id",
        "items[0].product_id",
        "items[0].quantity",
        "payment_info.card_number",
        "payment_info.expiry",
        "payment_info.amount",
    ]


def test_invalid_order_is_a_value_error():
    assert issubclass(InvalidOrder, ValueError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (20, Decimal("20.00")),
        (19.98, Decimal("19.98")),
        ("19.98", Decimal("19.98")),
        ("19.980", Decimal("19.98")),
        (Decimal("0.01"), Decimal("0.01")),
        ("  5 ", Decimal("5.00")),
        # The accepted syntax: ASCII whitespace around is ignored; a sign, a
        # fraction and an exponent are read; the value is in whole cents.
        ("\t5\n", Decimal("5.00")),
        ("+5", Decimal("5.00")),
        (".5", Decimal("0.50")),
        ("5.", Decimal("5.00")),
        ("1e2", Decimal("100.00")),
        ("1E-2", Decimal("0.01")),
        ("0.01", Decimal("0.01")),
        ("1000000000.00", Decimal("1000000000.00")),
        (1_000_000_000, Decimal("1000000000.00")),
        (Decimal("1E+9"), Decimal("1000000000.00")),
        ("0" * 37 + "1.5", Decimal("1.50")),
    ],
)
def test_amounts_are_held_as_decimal(raw, expected):
    order = validate_order(make_request(amount=raw))
    assert order.amount == expected and isinstance(order.amount, Decimal)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("user_id", 1),
        ("user_id", MAX_ID),
        ("items.0.product_id", 0),
        ("items.0.product_id", MAX_ID),
        ("items.0.quantity", 1),
        ("items.0.quantity", MAX_QUANTITY),
        ("order_id", "x" * MAX_ORDER_ID_LENGTH),
        ("payment_info.expiry", "01/00"),
        ("payment_info.cvv", "1234"),
        ("payment_info.cvv", None),
    ],
)
def test_values_at_the_limits_are_accepted(path, value):
    order = validate_order(_with(path, value))
    assert len(order.fingerprint()) == 64


def test_optional_fields_and_card_separators_are_accepted():
    order = validate_order(make_request(card="4242 4242 4242 4242", cvv="123", currency="EUR"))
    assert order.card.number == APPROVED
    assert order.card.cvv == "123"
    assert order.currency == "EUR"


def test_messages_never_quote_card_number_or_cvv():
    card = "4242424242424241"  # fails Luhn
    with pytest.raises(InvalidOrder) as raised:
        validate_order(make_request(card=card, cvv="99999"))
    assert card not in str(raised.value)
    assert "99999" not in str(raised.value)


def test_card_repr_is_masked():
    card = PaymentCard(APPROVED, "12/30", "123")
    for text in (repr(card), str(card), repr(validate_order(make_request(cvv="123")))):
        assert APPROVED not in text
        assert "123'" not in text and "cvv" not in text
    assert "4242" in repr(card)


def test_luhn():
    assert luhn_valid("4242424242424242")
    assert luhn_valid("5555555555554444")
    assert not luhn_valid("4242424242424241")


def test_invalid_order_changes_nothing():
    with OrderSystem(stock={101: 5}) as system:
        before = system.inventory()
        with pytest.raises(InvalidOrder):
            system.place_order(_with("items.0.quantity", -1))
        future = system.submit(_with("payment_info.amount", "abc"))
        with pytest.raises(InvalidOrder):
            future.get(1)
        assert system.inventory() == before
        assert system.payments() == {}
        assert system.orders() == {}
        assert system.metrics()["orders_placed"] == 0
