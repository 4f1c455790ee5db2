"""Property: through the public API, every request either is placed or raises InvalidOrder, and
an invalid one changes nothing."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_actors import InvalidOrder, OrderSystem
from tests.conftest import make_request

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.decimals(allow_nan=True, allow_infinity=True),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
FIELDS = ["user_id", "order_id", "items", "payment_info"]
PAYMENT_FIELDS = ["card_number", "expiry", "amount", "currency", "cvv"]


@st.composite
def requests(draw: st.DrawFn) -> Any:
    request: dict[str, Any] = make_request(f"p-{draw(st.integers(0, 10**6))}", [(101, 1)], amount="1.00")
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "payment", "item", "drop", "whole"]))
        if where == "top":
            request[draw(st.sampled_from(FIELDS))] = draw(VALUES)
        elif where == "payment" and isinstance(request.get("payment_info"), dict):
            request["payment_info"][draw(st.sampled_from(PAYMENT_FIELDS))] = draw(VALUES)
        elif where == "item" and isinstance(request.get("items"), list) and request["items"]:
            item = request["items"][0]
            if isinstance(item, dict):
                item[draw(st.sampled_from(["product_id", "quantity", "extra"]))] = draw(VALUES)
        elif where == "drop" and request:
            request.pop(draw(st.sampled_from(sorted(request))), None)
        elif where == "whole":
            return draw(VALUES)
    return request


SYSTEM = OrderSystem(stock={101: 10**6})
ORDER_IDS = itertools.count()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_every_request_is_placed_or_invalid_and_an_invalid_one_changes_nothing(request: Any) -> None:
    order_id = request.get("order_id") if isinstance(request, dict) else None
    if isinstance(order_id, str) and order_id.startswith("p-"):
        request["order_id"] = f"p-{next(ORDER_IDS)}"  # each example a new order (no idempotency conflict)
    with SYSTEM:
        before = (SYSTEM.orders(), SYSTEM.inventory(), SYSTEM.payments(), SYSTEM.metrics()["orders_placed"])
        try:
            outcome = SYSTEM.place_order(request, timeout=10)
        except InvalidOrder as invalid:
            assert invalid.problems
            assert (
                SYSTEM.orders(),
                SYSTEM.inventory(),
                SYSTEM.payments(),
                SYSTEM.metrics()["orders_placed"],
            ) == before
        else:
            assert outcome in (True, False)
            assert SYSTEM.wait_idle(10)
