"""The consistency checks a user trusts the engine by.

Pure functions over the public views, so the same checks serve the tests,
the demo, and an application that wants to audit a running system.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from saga_actors.actors.inventory import StockView
from saga_actors.actors.orders import OrderView
from saga_actors.actors.payment import PaymentView

__all__ = ["Check", "check_consistency"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def check_consistency(
    initial_stock: Mapping[int, int] | None,
    orders: Mapping[str, OrderView],
    inventory: Mapping[int, StockView],
    payments: Mapping[str, PaymentView],
) -> list[Check]:
    """Check a quiescent system: every saga has finished.

    `initial_stock` is the on-hand stock before the first order; None takes
    every unit the inventory ever received (its journal's own record).
    """
    confirmed = {o: v for o, v in orders.items() if v.state == "confirmed"}
    sold: dict[int, int] = {}
    for view in confirmed.values():
        for item in view.items:
            sold[item.product_id] = sold.get(item.product_id, 0) + item.quantity
    if initial_stock is None:
        initial_stock = {p: v.received for p, v in inventory.items()}

    pending = sorted(o for o, v in orders.items() if v.state == "pending")
    reserved = {p: v.reserved for p, v in inventory.items() if v.reserved}
    authorized = sorted(o for o, p in payments.items() if p.state == "authorized")
    unconserved = {}
    for product in sorted(set(initial_stock) | set(sold) | set(inventory)):
        expected = initial_stock.get(product, 0) - sold.get(product, 0)
        on_hand = inventory[product].on_hand if product in inventory else 0
        if on_hand != expected:
            unconserved[product] = (on_hand, expected)
    wrong_capture = sorted(
        o
        for o, v in confirmed.items()
        if o not in payments or payments[o].state != "captured" or payments[o].amount != v.amount
    )
    captured_not_confirmed = sorted(
        o for o, p in payments.items() if p.state == "captured" and o not in confirmed
    )
    oversold = sorted(p for p, v in inventory.items() if v.on_hand < 0 or v.reserved < 0)
    total = sum((v.amount for v in confirmed.values()), Decimal(0))
    return [
        Check("no order pending", not pending, _some(pending)),
        Check("nothing reserved", not reserved, _some(reserved)),
        Check("no payment left authorized", not authorized, _some(authorized)),
        Check(
            "stock conserved",
            not unconserved,
            _some({p: f"on hand {a}, expected {e}" for p, (a, e) in unconserved.items()}),
        ),
        Check(
            "every confirmed order captured exactly its amount",
            not wrong_capture and not captured_not_confirmed,
            _some(wrong_capture + captured_not_confirmed) or f"{len(confirmed)} orders, {total}",
        ),
        Check("no product oversold", not oversold, _some(oversold)),
    ]


def _some(items: object, limit: int = 5) -> str:
    if not items:
        return ""
    if isinstance(items, Mapping):
        shown = list(items.items())
        text = ", ".join(f"{k}: {v}" for k, v in shown[:limit])
    else:
        shown = list(items)  # type: ignore[call-overload]
        text = ", ".join(str(x) for x in shown[:limit])
    more = f" (+{len(shown) - limit} more)" if len(shown) > limit else ""
    return text + more
