"""`OrderSystem(journal="postgresql://...")`: the one-node order system on a PostgreSQL journal.

The same engine as on SQLite, with the in-process services: orders survive a
stop and a start (unfinished ones are resumed as recovery does), the journal
has one writer, and the password of the URL is shown nowhere.
"""

from __future__ import annotations

import logging

import pytest

from saga_actors import JournalInUse, OrderSystem, SagaRuntime
from saga_actors.actors.codec import order_codec
from saga_actors.persistence.postgres import PostgresJournal
from tests.conftest import APPROVED, DECLINED, assert_consistent, make_request, needs_postgres

pytestmark = needs_postgres
pytest.importorskip("psycopg")

STOCK = {101: 10, 102: 5}


def test_orders_on_postgresql_survive_a_restart_and_the_journal_has_one_writer(postgres_url):
    with OrderSystem(journal=postgres_url, stock=STOCK) as system:
        assert system.place_order(make_request("pg-1", [(101, 2)]), timeout=10) is True
        assert system.place_order(make_request("pg-2", [(102, 1)], card=DECLINED), timeout=10) is False
        with pytest.raises(JournalInUse):
            OrderSystem(journal=postgres_url).start()  # a second writer is refused
        assert system.wait_idle(10)
        assert_consistent(system, STOCK)
    with OrderSystem(journal=postgres_url, stock=STOCK) as system:  # the same database again
        assert system.order("pg-1").state == "confirmed"
        assert system.order("pg-2").state == "cancelled"
        assert system.place_order(make_request("pg-1", [(101, 2)]), timeout=10) is True  # its outcome
        assert system.inventory()[101].on_hand == 8  # stocked once, sold once
        assert_consistent(system, STOCK)


def test_a_saga_runtime_on_postgresql_resumes_an_unfinished_saga(postgres_url):
    from saga_actors.examples.trip import TripRequest, trip_runtime
    from saga_actors.sagas.simulation import FaultPlan

    slow = {"cars": FaultPlan(min_latency=30.0, max_latency=30.0, seed=1)}
    trip = TripRequest("Ada", "LH123", "Adlon", "compact")
    runtime: SagaRuntime
    with trip_runtime(journal=postgres_url, faults=slow) as runtime:
        runtime.submit("t1", trip)
        assert runtime.saga("t1") is not None
    with trip_runtime(journal=postgres_url) as runtime:
        assert runtime.recovery().sagas_resumed == 1
        assert runtime.wait_idle(10)
        outcome = runtime.outcome("t1")
        assert outcome is not None and not outcome.committed  # presumed abort: no commit decision


def test_the_password_of_a_journal_url_is_never_logged(postgres_url, caplog):
    import psycopg

    PostgresJournal(postgres_url, order_codec()).close()  # the tables, owned by postgres
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS saga_pw")
        admin.execute("CREATE ROLE saga_pw LOGIN PASSWORD 'S3cretPassw0rd' SUPERUSER")
    try:
        url = postgres_url.replace("postgres@", "saga_pw:S3cretPassw0rd@", 1)
        caplog.set_level(logging.DEBUG, logger="saga_actors")
        with OrderSystem(journal=url, stock=STOCK) as system:
            assert system.place_order(make_request("pw-1", [(101, 1)], card=APPROVED), timeout=10)
        assert "S3cretPassw0rd" not in caplog.text
        assert "saga_pw:***@" in caplog.text  # it says which journal, without the password
        journal = PostgresJournal(url, order_codec())
        assert "S3cretPassw0rd" not in repr(journal)
        journal.close()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("DROP ROLE IF EXISTS saga_pw")
