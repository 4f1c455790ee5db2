"""The consistency checks a user trusts the engine by.

Pure functions over the public views, so the same checks serve the tests,
the demo, and an application that wants to audit a running system.

The views of orders and payments hold what is in flight and what finished
within the retention window; the money and the units sold are checked over
all history through running totals that are never forgotten (`SalesView`,
`CapturesView`), and entry by entry where both sides still hold the entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from saga_actors.actors.inventory import StockView
from saga_actors.actors.orders import OrderView, SalesView
from saga_actors.actors.payment import CapturesView, PaymentView

__all__ = ["Check", "check_consistency"]

# Views carry no currency: totals derived from them are in one nameless currency.
_CURRENCY = ""


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
    *,
    sales: SalesView | None = None,
    captures: CapturesView | None = None,
) -> list[Check]:
    """Check a quiescent system: every saga has finished.

    `initial_stock` is the on-hand stock before the first order; None takes
    every unit the inventory ever received (its journal's own record).
    `sales` and `captures` are the running totals of every order ever
    confirmed and every payment ever captured; given, `orders` and
    `payments` may lack entries forgotten past the retention window (an
    entry one side has forgotten is then checked through the totals only).
    None derives each from its view, which must then hold every order
    (payment) ever. Give both or neither: ValueError otherwise.
    """
    if (sales is None) != (captures is None):
        raise ValueError("check_consistency: give both sales and captures, or neither")
    confirmed = {o: v for o, v in orders.items() if v.state == "confirmed"}
    complete = sales is None and captures is None  # the views hold every order and payment ever
    if sales is None:
        sales = _sales(confirmed.values())
    if captures is None:
        captures = _captures(payments.values())
    sold = sales.units
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
        if (o in payments and (payments[o].state != "captured" or payments[o].amount != v.amount))
        or (o not in payments and complete)
    )
    captured_not_confirmed = sorted(
        o
        for o, p in payments.items()
        if p.state == "captured" and ((o in orders and o not in confirmed) or (o not in orders and complete))
    )
    totals_differ = []
    if sales.orders != captures.payments:
        totals_differ.append(f"{sales.orders} orders confirmed, {captures.payments} payments captured")
    if _nonzero(sales.amounts) != _nonzero(captures.amounts):
        totals_differ.append(
            f"confirmed {_amounts(sales.amounts)}, captured {_amounts(captures.amounts)} in all"
        )
    oversold = sorted(p for p, v in inventory.items() if v.on_hand < 0 or v.reserved < 0)
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
            not wrong_capture and not captured_not_confirmed and not totals_differ,
            "; ".join(filter(None, [_some(wrong_capture + captured_not_confirmed), *totals_differ]))
            or f"{sales.orders} order{'' if sales.orders == 1 else 's'}, {_amounts(sales.amounts)}",
        ),
        Check("no product oversold", not oversold, _some(oversold)),
    ]


def _sales(confirmed: Iterable[OrderView]) -> SalesView:
    """The totals of the confirmed orders given (all there ever were, when derived from a view)."""
    count, units, amounts = 0, dict[int, int](), dict[str, Decimal]()
    for view in confirmed:
        count += 1
        for item in view.items:
            units[item.product_id] = units.get(item.product_id, 0) + item.quantity
        amounts[_CURRENCY] = amounts.get(_CURRENCY, Decimal(0)) + view.amount
    return SalesView(count, units, amounts)


def _captures(payments: Iterable[PaymentView]) -> CapturesView:
    captured = [p.amount for p in payments if p.state == "captured"]
    return CapturesView(len(captured), {_CURRENCY: sum(captured, Decimal(0))} if captured else {})


def _nonzero(amounts: Mapping[str, Decimal]) -> dict[str, Decimal]:
    return {currency: amount for currency, amount in amounts.items() if amount}


def _amounts(amounts: Mapping[str, Decimal]) -> str:
    """`USD 55,825.49`, or `EUR 10.00, USD 55,825.49` for several currencies (`0.00` for none)."""
    shown = _nonzero(amounts)
    if not shown:
        return "0.00"
    return ", ".join(f"{currency} {amount:,.2f}" for currency, amount in sorted(shown.items()))


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
