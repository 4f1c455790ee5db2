"""Shared helpers: request builders and the invariant assertion."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
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


# --- PostgreSQL ----------------------------------------------------------------------------

POSTGRES_ENV = "SAGA_ACTORS_TEST_POSTGRES"
POSTGRES_SKIP_REASON = (
    f'set {POSTGRES_ENV}=postgresql://...; `eval "$(bash .ci/postgres start)"` starts a throwaway server'
)

# For test files that need PostgreSQL (a cluster test, say): `pytestmark = needs_postgres`, and the
# `postgres_url` fixture for a fresh database per test (or `fresh_postgres_database()` directly).
needs_postgres = pytest.mark.skipif(not os.environ.get(POSTGRES_ENV), reason=POSTGRES_SKIP_REASON)


@contextlib.contextmanager
def fresh_postgres_database(server_url: str | None = None) -> Iterator[str]:
    """The URL of a new, empty database on the test server (`SAGA_ACTORS_TEST_POSTGRES`), dropped
    (WITH (FORCE): connections left open are ended) when the block ends."""
    import psycopg

    server_url = server_url or os.environ[POSTGRES_ENV]
    name = f"saga_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    parts = urllib.parse.urlsplit(server_url)
    try:
        yield urllib.parse.urlunsplit(parts._replace(path="/" + name))
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, empty database made for this test and dropped after it; the test is
    skipped when no server is given (see POSTGRES_SKIP_REASON)."""
    if not os.environ.get(POSTGRES_ENV):
        pytest.skip(POSTGRES_SKIP_REASON)
    with fresh_postgres_database() as url:
        yield url
