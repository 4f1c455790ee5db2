"""OrderSystem.restock: a delivery of stock, journaled like the initial stock."""

from __future__ import annotations

import pytest

from saga_actors.actors import OrderSystem, SystemNotRunning
from tests.conftest import assert_consistent, make_request


def test_restock_lets_a_sold_out_product_sell_again_and_survives_a_restart(tmp_path):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={101: 2}) as system:
        assert system.place_order(make_request("a", [(101, 2)]), timeout=5)
        assert not system.place_order(make_request("b", [(101, 3)]), timeout=5)
        assert system.order("b").reason == "insufficient_stock"
        system.restock({101: 5, 102: 4})  # 102 is new to the catalogue
        stock = system.inventory()
        assert (stock[101].on_hand, stock[101].received) == (5, 7)
        assert (stock[102].on_hand, stock[102].received) == (4, 4)
        assert system.place_order(make_request("c", [(101, 3), (102, 1)]), timeout=5)
        assert system.wait_idle(10)
        assert_consistent(system)  # stock conserved counts the delivery as received
    with OrderSystem(journal_path=path, stock={101: 2}) as system:  # `stock` seeds only an empty journal
        stock = system.inventory()
        assert (stock[101].on_hand, stock[101].received) == (2, 7)
        assert (stock[102].on_hand, stock[102].received) == (3, 4)


def test_bad_restock_names_each_problem_and_changes_nothing():
    with OrderSystem(stock={101: 2}) as system:
        with pytest.raises(ValueError) as raised:
            system.restock({101: -1, "x": 3, 102: 1.5, 103: True})
        message = str(raised.value)
        assert message.startswith("invalid restock: ")
        for problem in (
            "stock[101]: quantity -1 is not a non-negative integer",
            "stock: product id 'x' is not a non-negative integer",
            "stock[102]: quantity 1.5 is not a non-negative integer",
            "stock[103]: quantity True is not a non-negative integer",
        ):
            assert problem in message
        with pytest.raises(ValueError, match="must be a mapping of product id to quantity, got list"):
            system.restock([(101, 1)])  # type: ignore[arg-type]
        assert {p: v.received for p, v in system.inventory().items()} == {101: 2}


def test_restock_needs_a_running_system():
    system = OrderSystem(stock={101: 2})
    with pytest.raises(SystemNotRunning):
        system.restock({101: 1})
