"""PostgresJournal beyond the contracts: its lock modes, reader mode, corruption, the schema
version, jsonb, reconnecting after a server restart, passwords, group commit.

Skipped without SAGA_ACTORS_TEST_POSTGRES; the restart test also needs
SAGA_ACTORS_TEST_PGDATA and SAGA_ACTORS_TEST_PG_CTL (`.ci/postgres start` gives them).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest

from saga_actors.persistence import (
    EventCodec,
    JournalCorrupted,
    JournalInUse,
    NotAJournal,
    PostgresJournal,
    PostgresUnavailable,
    SerializationError,
)
from tests.conftest import needs_postgres, wait_until

pytestmark = needs_postgres
psycopg = pytest.importorskip("psycopg", reason="needs the extra saga-actors[postgres]")


@dataclass(frozen=True)
class Noted:
    n: int
    note: object = ""


CODEC = EventCodec()
CODEC.register(Noted)


def execute(url: str, *statements: str) -> list[tuple[object, ...]]:
    """Run SQL on the database directly (to damage or inspect it); the last statement's rows."""
    rows: list[tuple[object, ...]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            cursor = conn.execute(statement)
            rows = cursor.fetchall() if cursor.description else []
    return rows


@pytest.fixture
def journal(postgres_url):
    journal = PostgresJournal(postgres_url, CODEC)
    yield journal
    journal.close()


# --- the advisory lock ---


def test_a_second_writer_is_refused_until_the_first_closes(postgres_url, journal):
    with pytest.raises(JournalInUse) as refused:
        PostgresJournal(postgres_url, CODEC)
    assert refused.value.path == postgres_url
    assert "a writer" in str(refused.value) and "this process" in str(refused.value)
    assert isinstance(refused.value.holder_pid, int)  # the holder's backend pid, from pg_locks
    journal.close()
    PostgresJournal(postgres_url, CODEC).close()


def test_nodes_share_the_journal_and_a_writer_excludes_them(postgres_url):
    a = PostgresJournal(postgres_url, CODEC, mode="node")
    b = PostgresJournal(postgres_url, CODEC, mode="node")
    try:
        with pytest.raises(JournalInUse, match=r"nodes \(mode='node'\)"):
            PostgresJournal(postgres_url, CODEC, mode="writer")
    finally:
        a.close()
        b.close()
    writer = PostgresJournal(postgres_url, CODEC, mode="writer")
    try:
        with pytest.raises(JournalInUse, match="a writer"):
            PostgresJournal(postgres_url, CODEC, mode="node")
    finally:
        writer.close()


# --- reader mode ---


def test_a_reader_needs_a_journal_and_never_writes(postgres_url):
    with pytest.raises(NotAJournal, match="no saga-actors journal") as refused:
        PostgresJournal(postgres_url, CODEC, mode="reader")
    assert refused.value.path == postgres_url
    assert execute(postgres_url, "SELECT to_regclass('saga_actors_events') IS NULL") == [(True,)]
    with PostgresJournalClosing(postgres_url, "writer") as writer:
        writer.append("p", [Noted(1)], 0)
        reader = PostgresJournal(postgres_url, CODEC, mode="reader")  # beside the writer: no lock
        try:
            assert [e.event for e in reader.replay("p")] == [Noted(1)]
            for write in (
                lambda: reader.append("p", [Noted(2)], 1),
                lambda: reader.save_snapshot("p", 1, Noted(1)),
                lambda: reader.delete_to("p", 1),
                lambda: reader.acquire_lease("n", 10),
            ):
                with pytest.raises(RuntimeError, match="read-only"):
                    write()
        finally:
            reader.close()
        assert writer.highest_sequence_nr("p") == 1


class PostgresJournalClosing:
    def __init__(self, url: str, mode: str) -> None:
        self.journal = PostgresJournal(url, CODEC, mode=mode)  # type: ignore[arg-type]

    def __enter__(self) -> PostgresJournal:
        return self.journal

    def __exit__(self, *exc: object) -> None:
        self.journal.close()


# --- corruption and the schema ---


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("data = jsonb_set(data, '{n}', '7')", "checksum does not match"),
        ("type = 'Unknown'", "unknown type 'Unknown'"),
        ("data = '{\"nope\": 1}'", "fields do not fit"),
        ("data = '[1, 2]'", "not an object"),
        ("version = 9", "newer than this code"),
    ],
)
def test_a_row_changed_by_hand_is_journal_corrupted_naming_it(postgres_url, journal, change, problem):
    journal.append("p", [Noted(1), Noted(2), Noted(3)], 0)
    execute(postgres_url, f"UPDATE saga_actors_events SET {change} WHERE sequence_nr = 2")
    with pytest.raises(JournalCorrupted, match=problem) as corrupted:
        journal.replay("p")
    assert (corrupted.value.persistence_id, corrupted.value.sequence_nr) == ("p", 2)
    assert [e.sequence_nr for e in journal.replay("p", max_count=1)] == [1]


def test_a_missing_event_or_a_changed_snapshot_is_journal_corrupted(postgres_url, journal):
    journal.append("p", [Noted(1), Noted(2), Noted(3)], 0)
    journal.save_snapshot("p", 3, Noted(3))
    execute(
        postgres_url,
        "DELETE FROM saga_actors_events WHERE persistence_id = 'p' AND sequence_nr = 2",
        'UPDATE saga_actors_snapshots SET data = \'{"n": 4, "note": ""}\'',
    )
    with pytest.raises(JournalCorrupted, match="event missing") as missing:
        journal.replay("p")
    assert missing.value.sequence_nr == 2
    with pytest.raises(JournalCorrupted, match="snapshot: checksum does not match") as changed:
        journal.load_snapshot("p")
    assert (changed.value.persistence_id, changed.value.sequence_nr) == ("p", 3)


def test_a_journal_of_a_newer_schema_version_is_refused_and_left_untouched(postgres_url):
    PostgresJournal(postgres_url, CODEC).close()
    execute(postgres_url, "UPDATE saga_actors_schema SET version = 99")
    for mode in ("writer", "node", "reader"):
        with pytest.raises(NotAJournal, match=r"schema version is 99.*version 1") as refused:
            PostgresJournal(postgres_url, CODEC, mode=mode)  # type: ignore[arg-type]
        assert refused.value.path == postgres_url
    assert execute(postgres_url, "SELECT version FROM saga_actors_schema") == [(99,)]


def test_journals_starting_at_once_create_the_schema_once(postgres_url):
    made: list[PostgresJournal] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            made.append(PostgresJournal(postgres_url, CODEC, mode="node"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for journal in made:
        journal.close()
    assert errors == [] and len(made) == 6
    assert execute(postgres_url, "SELECT version FROM saga_actors_schema") == [(1,)]


# --- jsonb ---

AWKWARD = [
    Noted(1, Decimal("19.980")),
    Noted(2, {"zeta": Decimal("-0.00"), "alpha": (1, 2.5, True, None), "é✓ 𝄞": '\u202e\n\t"\\'}),
    Noted(3, {(3, 1): {Noted(4, "nested")}}),
    Noted(4, (1e300, 1.5e-7, -0.0, 2**70)),
    Noted(5, "x" * 10_000),
]


def test_checksums_survive_jsonbs_normalisation(postgres_url, journal):
    """jsonb reorders keys, normalises numbers and spacing: the checksum is over its text."""
    journal.append("p", AWKWARD, 0)
    journal.save_snapshot("p", 5, AWKWARD[1])
    replayed = [e.event for e in journal.replay("p")]
    assert replayed[:3] == AWKWARD[:3] and replayed[4] == AWKWARD[4]
    assert replayed[3].note[1:] == (1.5e-7, 0.0, 2**70)
    assert journal.load_snapshot("p").snapshot == AWKWARD[1]
    stored = execute(
        postgres_url, "SELECT data->'note'->>'$decimal' FROM saga_actors_events ORDER BY sequence_nr LIMIT 1"
    )
    assert stored == [("19.980",)]  # a decimal's digits as written


@pytest.mark.parametrize("note", [float("nan"), float("inf"), "a\x00b", {"k\x00": 1}, "\ud800"])
def test_what_jsonb_cannot_hold_is_refused_before_anything_is_written(journal, note):
    with pytest.raises(SerializationError):
        journal.append("p", [Noted(1), Noted(2, note)], 0)
    with pytest.raises(ValueError):
        journal.append("p\x00", [Noted(1)], 0)
    assert journal.highest_sequence_nr("p") == 0
    assert journal.append("p", [Noted(1)], 0) == 1  # the writer goes on


# --- group commit and failures within a batch ---


def test_group_commit_writes_concurrent_appends_in_fewer_transactions(postgres_url):
    for group_commit in (True, False):
        journal = PostgresJournal(postgres_url, CODEC, group_commit=group_commit)
        try:
            done = threading.Semaphore(0)
            for n in range(400):
                journal.append_async(f"g{group_commit}-{n}", [Noted(n)], 0, lambda h, e, d=done: d.release())
            journal.flush()
            for _ in range(400):
                assert done.acquire(timeout=10)
            if group_commit:
                assert journal.transactions < journal.operations
            else:
                assert journal.transactions == journal.operations
        finally:
            journal.close()


def test_a_refused_append_fails_alone_in_its_batch(journal):
    held, let_go = threading.Event(), threading.Event()
    journal.before_commit = lambda: (held.set(), let_go.wait(30))
    journal.append_async("first", [Noted(0)], 0, lambda h, e: None)
    assert held.wait(10)  # the writer is in a transaction: what follows is queued as one batch
    journal.before_commit = None
    results: list[tuple[object, object]] = []
    finished = threading.Event()

    def record(highest, error):
        results.append((highest, type(error).__name__ if error else None))
        if len(results) == 4:
            finished.set()

    journal.append_async("a", [Noted(1)], 0, record)
    journal.append_async("b", [Noted(1)], 5, record)  # stale
    journal.append_async("a", [Noted(2)], 1, record)
    journal.append_async("c", [Noted(1)], 0, record)
    let_go.set()
    assert finished.wait(10)
    assert results == [(1, None), (None, "ConcurrencyError"), (2, None), (1, None)]
    assert journal.transactions == 2
    assert journal.persistence_ids() == ["a", "c", "first"]  # no stream left for the refused one


# --- a server restart ---

PGDATA, PG_CTL = os.environ.get("SAGA_ACTORS_TEST_PGDATA"), os.environ.get("SAGA_ACTORS_TEST_PG_CTL")


def restart_server() -> None:
    runas = os.environ.get("SAGA_ACTORS_TEST_PG_RUNAS")
    log = os.path.join(os.path.dirname(PGDATA), "server.log")  # where .ci/postgres logs it
    command = [PG_CTL, "-D", PGDATA, "-l", log, "-m", "immediate", "-w", "restart"]
    if runas:
        command = ["runuser", "-u", runas, "--", *command]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


@pytest.mark.skipif(not (PGDATA and PG_CTL), reason="set SAGA_ACTORS_TEST_PGDATA and SAGA_ACTORS_TEST_PG_CTL")
def test_after_a_server_restart_the_journal_reconnects(postgres_url, caplog):
    caplog.set_level(logging.INFO, logger="saga_actors.persistence.postgres")
    journal = PostgresJournal(postgres_url, CODEC)
    notices: list[str] = []
    try:
        journal.subscribe(notices.append)
        journal.append("p", [Noted(1)], 0)
        restart_server()
        try:  # the writer's connection died with the server: this append fails, clearly
            journal.append("p", [Noted(2)], 1)
        except PostgresUnavailable as error:
            assert "lost the connection" in str(error) and "may have been stored" in str(error)
        else:  # or, had the writer noticed first, it reconnected and stored it
            pass
        highest = journal.highest_sequence_nr("p")  # reads reconnect through the pool
        assert journal.append("p", [Noted(3)], highest) == highest + 1
        assert [e.event.n for e in journal.replay("p")][-1] == 3
        with pytest.raises(JournalInUse):  # the advisory lock was taken again
            PostgresJournal(postgres_url, CODEC)

        def notice_arrives() -> bool:  # the listener reconnects; notices meanwhile are missed
            journal.publish("ping")
            return "ping" in notices

        wait_until(notice_arrives, timeout=20, what="the listener to reconnect")
    finally:
        journal.close()
    lost = [r for r in caplog.records if r.levelno == logging.WARNING and "writer" not in r.getMessage()]
    assert len([r for r in lost if "lost the connection" in r.getMessage()]) == 1  # once per outage


# --- passwords ---


def test_a_password_is_never_shown(postgres_url, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-P@ss"
    user = f"pw_user_{uuid.uuid4().hex[:8]}"  # roles belong to the server, not to the test's database
    execute(postgres_url, f"CREATE ROLE {user} LOGIN SUPERUSER PASSWORD '{secret}'")
    try:
        shown = messages_with_a_password(postgres_url, user, secret)
    finally:
        execute(postgres_url, f"DROP OWNED BY {user}", f"DROP ROLE {user}")
    shown += [record.getMessage() for record in caplog.records]
    assert len(shown) > 5
    quoted = urllib.parse.quote(secret, safe="")
    for text in shown:
        assert secret not in text and quoted not in text, text


def messages_with_a_password(postgres_url: str, user: str, secret: str) -> list[str]:
    """The repr, and the messages of the errors, of journals given `user`'s password."""
    quoted = urllib.parse.quote(secret, safe="")
    parts = urllib.parse.urlsplit(postgres_url)
    with_password = parts._replace(netloc=f"{user}:{quoted}@{parts.hostname}:{parts.port}").geturl()
    shown: list[str] = []
    journal = PostgresJournal(with_password, CODEC)
    try:
        shown.append(repr(journal))
        with pytest.raises(JournalInUse) as in_use:
            PostgresJournal(with_password + "?password=" + quoted, CODEC)
        shown.append(str(in_use.value))
        assert in_use.value.path == with_password.replace(f":{quoted}", "")
    finally:
        journal.close()
    for url in (
        parts._replace(netloc=f"{user}:{quoted}@{parts.hostname}:1").geturl(),  # nothing listens
        parts._replace(netloc=f"{user}:{quoted}@{parts.hostname}:{parts.port}", path="/nope").geturl(),
        f"host={parts.hostname} port=1 user={user} password={secret} dbname=x",
    ):
        with pytest.raises(PostgresUnavailable) as unavailable:
            PostgresJournal(url, CODEC)
        shown.append(str(unavailable.value))
        assert unavailable.value.__cause__ is None and unavailable.value.__suppress_context__
    empty = parts._replace(netloc=f"{user}:{quoted}@{parts.hostname}:{parts.port}").geturl()
    execute(postgres_url, "DROP TABLE saga_actors_schema")
    with pytest.raises(NotAJournal) as not_a_journal:
        PostgresJournal(empty, CODEC, mode="reader")
    shown.append(str(not_a_journal.value))
    return shown


def test_a_transaction_left_open_by_a_paused_node_is_ended_by_the_server(postgres_url):
    """A node paused inside a lease call or a write (SIGSTOP, a GC) would hold its node row's lock
    for as long as it is paused; the server ends such a transaction after `writer_idle_timeout`,
    and a take-over that waits for the lock gives up after `lease_call_timeout` and tries again."""
    import psycopg

    paused = PostgresJournal(postgres_url, CODEC, mode="node", writer_idle_timeout=0.8)
    other = PostgresJournal(postgres_url, CODEC, mode="node", lease_call_timeout=0.2)
    try:
        fence = paused.acquire_lease("p", 0.3)
        mine = other.acquire_lease("o", 30)
        assert fence is not None and mine is not None
        wait_until(lambda: not [n for n in other.leases() if n.node_id == "p" and n.expires_in > 0])
        with pytest.raises(psycopg.Error, match="idle-in-transaction"), paused._transaction() as cur:
            cur.execute("SELECT 1 FROM saga_actors_nodes WHERE node_id = 'p' FOR UPDATE")  # then paused
            assert other.take_over(fence, mine, "x", ()) is None  # the lock is held: try later
            taken: list[object] = []
            # The server ends the idle transaction, which frees the lock: the next try goes ahead.
            wait_until(lambda: taken.append(other.take_over(fence, mine, "x", ())) or taken[-1] is not None)
            assert taken[-1] == []
            cur.execute("SELECT 1")  # the paused node's connection is gone, its transaction undone
    finally:
        paused.close()
        other.close()
