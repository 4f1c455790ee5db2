"""The consistency checker itself: each check really fails on a broken state."""

from __future__ import annotations

from decimal import Decimal

import pytest

from saga_actors.actors.consistency import check_consistency
from saga_actors.actors.inventory import StockView
from saga_actors.actors.orders import OrderView, SalesView
from saga_actors.actors.payment import CapturesView, PaymentView
from saga_actors.actors.validation import OrderItem

STOCK = {1: 10, 2: 5}


def good():
    orders = {
        "a": OrderView("a", "confirmed", None, Decimal("9.00"), (OrderItem(1, 3),)),
        "b": OrderView("b", "cancelled", "card_declined", Decimal("4.00"), (OrderItem(2, 1),)),
        "c": OrderView("c", "cancelled", "insufficient_stock", Decimal("1.00"), (OrderItem(2, 9),)),
    }
    inventory = {1: StockView(7, 0, 10), 2: StockView(5, 0, 5)}
    payments = {"a": PaymentView("captured", Decimal("9.00")), "c": PaymentView("voided", Decimal("1.00"))}
    return orders, inventory, payments


def failing(orders, inventory, payments, initial=STOCK):
    return {c.name for c in check_consistency(initial, orders, inventory, payments) if not c.ok}


def test_a_consistent_state_passes_every_check():
    assert failing(*good()) == set()
    assert failing(*good(), initial=None) == set()  # initial stock from what was received
    assert len(check_consistency(STOCK, *good())) == 6


@pytest.mark.parametrize(
    ("break_it", "check"),
    [
        (
            lambda o, i, p: o.update(a=OrderView("a", "pending", None, Decimal("9.00"), (OrderItem(1, 3),))),
            "no order pending",
        ),
        (lambda o, i, p: i.update({2: StockView(5, 2, 5)}), "nothing reserved"),
        (
            lambda o, i, p: p.update(c=PaymentView("authorized", Decimal("1.00"))),
            "no payment left authorized",
        ),
        (lambda o, i, p: i.update({1: StockView(8, 0, 10)}), "stock conserved"),
        (
            lambda o, i, p: p.update(a=PaymentView("captured", Decimal("8.99"))),
            "every confirmed order captured exactly its amount",
        ),
        (
            lambda o, i, p: p.update(a=PaymentView("voided", Decimal("9.00"))),
            "every confirmed order captured exactly its amount",
        ),
        (lambda o, i, p: p.pop("a"), "every confirmed order captured exactly its amount"),
        (
            lambda o, i, p: p.update(b=PaymentView("captured", Decimal("4.00"))),
            "every confirmed order captured exactly its amount",
        ),
        (lambda o, i, p: i.update({2: StockView(-1, 0, 5)}), "no product oversold"),
    ],
)
def test_each_check_fails_on_its_broken_state(break_it, check):
    orders, inventory, payments = good()
    break_it(orders, inventory, payments)
    assert check in failing(orders, inventory, payments)


def test_failures_name_what_is_wrong():
    orders, inventory, payments = good()
    inventory[1] = StockView(8, 0, 10)
    (stock,) = [c for c in check_consistency(STOCK, orders, inventory, payments) if not c.ok]
    assert stock.detail == "1: on hand 8, expected 7"


# --- with running totals: entries forgotten past the retention window ---

SALES = SalesView(1, {1: 3}, {"USD": Decimal("9.00")})
CAPTURES = CapturesView(1, {"USD": Decimal("9.00")})


def failing_with_totals(orders, inventory, payments, sales=SALES, captures=CAPTURES):
    checks = check_consistency(STOCK, orders, inventory, payments, sales=sales, captures=captures)
    return {c.name for c in checks if not c.ok}


def test_entries_forgotten_on_either_side_are_checked_through_the_totals():
    orders, inventory, payments = good()
    assert failing_with_totals(orders, inventory, payments) == set()
    assert failing_with_totals({}, inventory, {}) == set()  # everything forgotten
    assert failing_with_totals(orders, inventory, {}) == set()  # the payments forgotten first
    assert failing_with_totals({}, inventory, payments) == set()  # the orders forgotten first


@pytest.mark.parametrize(
    ("sales", "captures"),
    [
        (SALES, CapturesView(0, {})),  # a confirmed order never captured
        (SALES, CapturesView(2, {"USD": Decimal("18.00")})),  # a capture without a confirmed order
        (SALES, CapturesView(1, {"USD": Decimal("8.99")})),  # captured the wrong amount
        (SALES, CapturesView(1, {"EUR": Decimal("9.00")})),  # in the wrong currency
    ],
)
def test_totals_that_differ_fail_the_capture_check_even_when_every_entry_is_forgotten(sales, captures):
    failed = failing_with_totals({}, {1: StockView(7, 0, 10), 2: StockView(5, 0, 5)}, {}, sales, captures)
    assert failed == {"every confirmed order captured exactly its amount"}


def test_stock_is_conserved_against_the_units_ever_sold():
    inventory = {1: StockView(7, 0, 10), 2: StockView(5, 0, 5)}
    assert failing_with_totals({}, inventory, {}) == set()
    oversold = SalesView(1, {1: 4}, {"USD": Decimal("9.00")})
    assert failing_with_totals({}, inventory, {}, sales=oversold) == {"stock conserved"}


def test_an_entry_both_sides_still_hold_is_checked_one_by_one():
    orders, inventory, payments = good()
    payments["a"] = PaymentView("voided", Decimal("9.00"))
    failed = failing_with_totals(orders, inventory, payments)
    assert failed == {"every confirmed order captured exactly its amount"}


def test_totals_come_in_pairs():
    with pytest.raises(ValueError, match="both sales and captures"):
        check_consistency(STOCK, *good(), sales=SALES)


def test_the_captured_totals_say_their_currency_and_count():
    orders, inventory, payments = good()
    checks = check_consistency(STOCK, orders, inventory, payments, sales=SALES, captures=CAPTURES)
    (captured,) = [c for c in checks if c.name == "every confirmed order captured exactly its amount"]
    assert captured.ok and captured.detail == "1 order, USD 9.00"
