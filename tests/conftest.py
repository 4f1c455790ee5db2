"""Shared helpers: request builders and the invariant assertion."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

APPROVED = "4242424242424242"
DECLINED = "4000000000000002"
NO_FUNDS = "4000000000009995"
OTHER_VALID = "5555555555554444"  # Luhn-valid, approved


def make_request(
    order_id: str = "ord-1",
    items: list[tuple[int, int]] | None = None,
    *,
    card: str = APPROVED,
    amount: Any = "19.98",
    expiry: str = "12/30",
    user_id: int = 42,
    **payment_extra: Any,
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "order_id": order_id,
        "items": [{"product_id": p, "quantity": q} for p, q in (items if items is not None else [(101, 2)])],
        "payment_info": {"card_number": card, "expiry": expiry, "amount": amount, **payment_extra},
    }


def assert_consistent(system: Any, initial_stock: dict[int, int] | None = None) -> None:
    """Every consistency invariant holds (call once the system is idle)."""
    failed = [c for c in system.check_consistency(initial_stock) if not c.ok]
    assert not failed, "\n".join(f"{c.name}: {c.detail}" for c in failed)


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Wait for `condition()` to be truthy (polled); fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.005)
    return result


@pytest.fixture
def request_factory():
    return make_request


def execute_sql(path: Any, *statements: str) -> None:
    """Run SQL statements against a journal file directly (to damage or inspect it in a test)."""
    import sqlite3

    db = sqlite3.connect(path)
    try:
        for statement in statements:
            db.execute(statement)
        db.commit()
    finally:
        db.close()
