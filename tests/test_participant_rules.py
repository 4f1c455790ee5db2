"""Inventory, payment and order rules as pure functions (no threads)."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest

from saga_actors.actors import IdempotencyConflict, orders
from saga_actors.actors import inventory as inv
from saga_actors.actors import payment as pay
from saga_actors.actors.validation import OrderItem, PaymentCard, validate_order
from tests.conftest import APPROVED, DECLINED, NO_FUNDS, OTHER_VALID, make_request

TODAY = datetime.date(2026, 11, 26)


def run(module, state, command, **kwargs):
    """decide, apply, answer - what the participant actor does for one request."""
    events = module.decide(command, state, **kwargs)
    for event in events:
        state = module.evolve(state, event)
    return events, module.answer(command, state)


def stocked(**stock: int) -> inv.InventoryState:
    state = inv.InventoryState()
    return inv.evolve(state, inv.ProductsStocked(tuple((int(p[1:]), q) for p, q in stock.items())))


ITEMS = (OrderItem(1, 2), OrderItem(2, 1))


# --- inventory ---


def test_reservation_is_all_or_nothing_and_holds_units():
    state = stocked(p1=5, p2=1)
    _, result = run(inv, state, inv.ReserveStock("o1", ITEMS))
    assert result == (True, None)
    assert (state.available(1), state.available(2)) == (3, 0)
    _, result = run(inv, state, inv.ReserveStock("o2", (OrderItem(1, 1), OrderItem(2, 1))))
    assert result == (False, "insufficient_stock")
    assert (state.reserved[1], state.reserved[2]) == (2, 1)  # nothing of o2 held


def test_unknown_product_is_rejected():
    state = stocked(p1=5)
    assert run(inv, state, inv.ReserveStock("o1", (OrderItem(9, 1),)))[1] == (False, "unknown_product")


def test_commit_lowers_on_hand_and_release_frees_units():
    state = stocked(p1=5, p2=1)
    run(inv, state, inv.ReserveStock("o1", ITEMS))
    assert run(inv, state, inv.CommitStock("o1"))[1] == (True, None)
    assert (state.on_hand[1], state.reserved[1]) == (3, 0)
    state = stocked(p1=5, p2=1)
    run(inv, state, inv.ReserveStock("o1", ITEMS))
    assert run(inv, state, inv.ReleaseStock("o1"))[1] == (True, None)
    assert (state.on_hand[1], state.reserved[1], state.available(2)) == (5, 0, 1)


@pytest.mark.parametrize(
    "command",
    [
        inv.ReserveStock("o1", ITEMS),
        inv.CommitStock("o1"),
        inv.ReleaseStock("o1"),
    ],
)
def test_inventory_repeats_get_the_first_result_and_change_nothing(command):
    state = stocked(p1=5, p2=1)
    run(inv, state, inv.ReserveStock("o1", ITEMS))
    first = run(inv, state, command)
    snapshot = (dict(state.on_hand), dict(state.reserved))
    events, again = run(inv, state, command)
    assert events == [] and again == first[1]
    assert (dict(state.on_hand), dict(state.reserved)) == snapshot


def test_rejection_is_remembered_even_when_stock_frees_up():
    state = stocked(p1=1)
    run(inv, state, inv.ReserveStock("big", (OrderItem(1, 1),)))
    assert run(inv, state, inv.ReserveStock("o2", (OrderItem(1, 1),)))[1] == (False, "insufficient_stock")
    run(inv, state, inv.ReleaseStock("big"))
    assert run(inv, state, inv.ReserveStock("o2", (OrderItem(1, 1),)))[1] == (False, "insufficient_stock")


def test_release_that_overtakes_its_reserve_makes_the_reserve_refused():
    state = stocked(p1=5)
    assert run(inv, state, inv.ReleaseStock("o1"))[1] == (True, None)
    events, result = run(inv, state, inv.ReserveStock("o1", (OrderItem(1, 1),)))
    assert events == [] and result == (False, "released")
    assert state.reserved[1] == 0


def test_committed_stock_cannot_be_released():
    state = stocked(p1=5)
    run(inv, state, inv.ReserveStock("o1", (OrderItem(1, 1),)))
    run(inv, state, inv.CommitStock("o1"))
    assert run(inv, state, inv.ReleaseStock("o1")) == ([], (False, "already_committed"))


# --- payment ---


def authorize(order_id: str, card: str = APPROVED, expiry: str = "12/30") -> pay.AuthorizePayment:
    return pay.AuthorizePayment(order_id, Decimal("10.00"), "USD", PaymentCard(card, expiry))


@pytest.mark.parametrize(
    ("card", "expiry", "expected"),
    [
        (APPROVED, "12/30", (True, None)),
        (OTHER_VALID, "12/30", (True, None)),
        (DECLINED, "12/30", (False, "card_declined")),
        (NO_FUNDS, "12/30", (False, "insufficient_funds")),
        (APPROVED, "10/26", (False, "expired_card")),
        (APPROVED, "11/26", (True, None)),  # valid through the end of its month
    ],
)
def test_test_cards(card, expiry, expected):
    state = pay.PaymentState()
    assert run(pay, state, authorize("o1", card, expiry), today=TODAY)[1] == expected


def test_authorization_keeps_only_the_last_four_digits():
    state = pay.PaymentState()
    events, _ = run(pay, state, authorize("o1"), today=TODAY)
    assert events == [pay.PaymentAuthorized("o1", Decimal("10.00"), "USD", "4242")]
    assert APPROVED not in repr(events) + repr(state)


def test_capture_and_void():
    state = pay.PaymentState()
    run(pay, state, authorize("o1"), today=TODAY)
    assert run(pay, state, pay.CapturePayment("o1"))[1] == (True, None)
    assert run(pay, state, pay.VoidPayment("o1"))[1] == (False, "already_captured")
    run(pay, state, authorize("o2"), today=TODAY)
    assert run(pay, state, pay.VoidPayment("o2"))[1] == (True, None)
    assert run(pay, state, pay.CapturePayment("o2"))[1] == (False, "voided")
    assert {o: v.state for o, v in pay.views(state).items()} == {"o1": "captured", "o2": "voided"}


def test_declined_card_leaves_no_authorization_and_void_is_harmless():
    state = pay.PaymentState()
    run(pay, state, authorize("o1", DECLINED), today=TODAY)
    assert run(pay, state, pay.VoidPayment("o1")) == ([], (True, None))
    assert pay.views(state) == {}


@pytest.mark.parametrize("command", [authorize("o1"), pay.CapturePayment("o1"), pay.VoidPayment("o1")])
def test_payment_repeats_get_the_first_result(command):
    state = pay.PaymentState()
    run(pay, state, authorize("o1"), today=TODAY)
    first = run(pay, state, command, today=TODAY)[1]
    assert run(pay, state, command, today=TODAY) == ([], first)


def test_void_that_overtakes_its_authorize_makes_the_authorize_refused():
    state = pay.PaymentState()
    assert run(pay, state, pay.VoidPayment("o1"))[1] == (True, None)
    assert run(pay, state, authorize("o1"), today=TODAY) == ([], (False, "voided"))
    assert pay.views(state) == {}


# --- orders ---


def test_same_order_id_same_content_is_a_repeat_different_content_a_conflict():
    state = orders.OrdersState()
    first = validate_order(make_request("o1"))
    events = orders.decide(orders.PlaceOrder(first), state)
    state = orders.evolve(state, events[0])
    assert orders.decide(orders.PlaceOrder(validate_order(make_request("o1"))), state) == []
    reordered = validate_order(make_request("o1", items=[(101, 2)], amount=19.98))
    assert orders.decide(orders.PlaceOrder(reordered), state) == []
    with pytest.raises(IdempotencyConflict):
        orders.decide(orders.PlaceOrder(validate_order(make_request("o1", amount="1.00"))), state)


def test_confirmed_order_cannot_be_cancelled():
    state = orders.OrdersState()
    state = orders.evolve(
        state, orders.decide(orders.PlaceOrder(validate_order(make_request("o1"))), state)[0]
    )
    assert run(orders, state, orders.ConfirmOrder("o1"))[1] == (True, None)
    assert run(orders, state, orders.CancelOrder("o1", "x")) == ([], (False, "order is confirmed"))
