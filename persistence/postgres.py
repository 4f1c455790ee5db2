"""The PostgreSQL journal and snapshot store, with node leases: a journal several processes share.

`PostgresJournal(url, codec, mode=...)` stores events and snapshots in a
PostgreSQL database as JSONB with their type name and version (see
`EventCodec`), and implements the `LeaseStore` contract of
`persistence.lease` (leases, fencing, take-over, notices), timed by the
database's clock. It needs the extra `saga-actors[postgres]` (psycopg 3 and
psycopg-pool); importing this module does not.

Tables (created if missing, under a transaction-level advisory lock so that
nodes starting at once do not race), all prefixed `saga_actors_`: `schema`
(the schema version, `SCHEMA_VERSION`; a database of a newer version is
refused and left untouched), `streams` (per persistence id: the highest
sequence number, what is deleted, the type name of the last event and the
owning node), `events` and `snapshots` (type, version, data as jsonb, the
database time written, a checksum), `nodes` (the leases: epoch, expiry).
Text columns that hold ids use the "C" collation: sorted as Python sorts.

Checksums: every event and snapshot row carries `row_checksum` (the SQLite
journal's) computed by the database, in the INSERT, over the jsonb's own
text form (`data::text`), which is canonical: jsonb sorts keys and
normalises numbers and spacing, so the checksum is over what is stored and
read back, not over the text the codec wrote. Every row read is verified,
and one changed by hand is `JournalCorrupted` naming it. (jsonb keeps a JSON
number as a decimal: a float written in exponent form, 1e+16, comes back as
the integer 10000000000000000; NaN, infinities, U+0000 and lone surrogates
cannot be stored and raise SerializationError when written.)

Threads: writes (appends, snapshots, deletions) are queued to one writer
thread ("journal-writer") with its own connection, which writes everything
queued in ONE transaction (group commit) and calls `append_async` callbacks,
in order. Reads, and the lease calls, run in the caller's thread on
connections from a pool. `subscribe` callbacks run in the listener thread
("journal-listener"), with its own connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from saga_actors.persistence.journal import (
    MAX_SEQUENCE_NR,
    AppendCallback,
    ConcurrencyError,
    JournalCorrupted,
    JournalInUse,
    JournalWithSnapshots,
    PersistentEvent,
    SelectedSnapshot,
)
from saga_actors.persistence.lease import (
    MAX_NOTICE,
    Fence,
    FencedHandle,
    LeaseLost,
    NodeLease,
    check_lease_seconds,
    check_node_id,
)
from saga_actors.persistence.serialization import EventCodec, SerializationError
from saga_actors.persistence.sqlite import SCHEMA as SQLITE_SCHEMA
from saga_actors.persistence.sqlite import NotAJournal, decode_checked, row_checksum
from saga_actors.persistence.writer import QueuedWrite, WriteQueue

_DRIVER_MISSING: ImportError | None = None
try:
    import psycopg
    import psycopg_pool
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
except ImportError as missing:  # the extra is not installed: PostgresJournal says so when made
    _DRIVER_MISSING = missing

__all__ = [
    "SCHEMA_VERSION",
    "TABLE_PREFIX",
    "Mode",
    "PostgresJournal",
    "PostgresJournalInUse",
    "PostgresUnavailable",
    "check_schema",
    "copy_for_inspection",
    "lock_holders",
    "safe_url",
]

logger = logging.getLogger(__name__)

Mode = Literal["writer", "node", "reader"]
MODES: tuple[Mode, ...] = ("writer", "node", "reader")

# The schema this library writes, recorded in saga_actors_schema.
SCHEMA_VERSION = 1
TABLE_PREFIX = "saga_actors_"

# Advisory lock keys (session level, bigint; below 2**31, so pg_locks shows them as objid).
WRITER_LOCK_KEY = 0x5A6A_0001  # held exclusively by a "writer", shared by "node"s
SCHEMA_LOCK_KEY = 0x5A6A_0002  # transaction level, while the schema is created


# A lease call (acquire, renew, release, leases, take-over) waits at most this long, for a lock
# or a statement: the thread that renews a lease must not hang behind a stuck transaction.
LEASE_CALL_TIMEOUT = 1.0  # seconds
# A writer's transaction left open by its client for this long is ended by the server: a node
# paused mid-transaction (SIGSTOP, a long GC) then releases its locks, so that a take-over that
# waits for its write in flight goes ahead; the write fails, as it must after a lost lease.
WRITER_IDLE_IN_TRANSACTION = 2.0  # seconds
RECONNECT_SECONDS = 10.0  # how long the writer keeps trying to reconnect before failing a batch
CONNECT_TIMEOUT = 5  # seconds, for each connection attempt

# Events and snapshots: one row each, the same columns.
_ROWS_TABLE = """CREATE TABLE IF NOT EXISTS saga_actors_{name} (
    persistence_id text COLLATE "C" NOT NULL,
    sequence_nr bigint NOT NULL,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    type text NOT NULL,
    version integer NOT NULL,
    data jsonb NOT NULL,
    checksum bigint NOT NULL,{extra}
    PRIMARY KEY (persistence_id, sequence_nr)
);"""
# Who wrote an event: the node and the lease epoch of a fenced write (NULL for an unfenced one),
# so that an operator can see which incarnation of which node wrote what.
_WRITER_COLUMNS = """
    writer_node text COLLATE "C",
    writer_epoch bigint,"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS saga_actors_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS saga_actors_streams (
    persistence_id text COLLATE "C" PRIMARY KEY,
    highest_sequence_nr bigint NOT NULL,
    deleted_to bigint NOT NULL DEFAULT 0,
    last_type text,
    owner text COLLATE "C"
);
CREATE INDEX IF NOT EXISTS saga_actors_streams_owner
    ON saga_actors_streams (owner, persistence_id) WHERE owner IS NOT NULL;
{rows_events}
{rows_snapshots}
CREATE TABLE IF NOT EXISTS saga_actors_nodes (
    node_id text COLLATE "C" PRIMARY KEY,
    epoch bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
""".format(
    rows_events=_ROWS_TABLE.format(name="events", extra=_WRITER_COLUMNS),
    rows_snapshots=_ROWS_TABLE.format(name="snapshots", extra=""),
)

# `row_checksum` in SQL, over the columns r.p (persistence id), r.s (sequence number), r.t (type),
# r.v (version) and r.d (jsonb): the same framing, the first 8 bytes of SHA-256 as a signed bigint.
_CHECKSUM = (
    "('x' || left(encode(sha256(convert_to(length(r.p) || ':' || r.p || ':' || r.s || ':' "
    "|| length(r.t) || ':' || r.t || ':' || r.v || ':' || r.d::text, 'UTF8')), 'hex'), 16))::bit(64)::bigint"
)


def _insert_rows(table: str) -> str:
    """An INSERT of rows given as five arrays (ids, sequence numbers, types, versions, JSON texts),
    the checksum computed by the database over the stored jsonb."""
    return (
        f"INSERT INTO {table} (persistence_id, sequence_nr, type, version, data, checksum) "
        f"SELECT r.p, r.s, r.t, r.v, r.d, {_CHECKSUM} FROM ("
        "SELECT u.p, u.s, u.t, u.v, u.d::jsonb AS d "
        "FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::int[], %s::text[]) AS u(p, s, t, v, d)) r"
    )


# Events: the same, with two more arrays, the writer's node and epoch (NULLs when not fenced).
_INSERT_EVENTS = (
    "INSERT INTO saga_actors_events "
    "(persistence_id, sequence_nr, type, version, data, checksum, writer_node, writer_epoch) "
    f"SELECT r.p, r.s, r.t, r.v, r.d, {_CHECKSUM}, r.n, r.e FROM ("
    "SELECT u.p, u.s, u.t, u.v, u.d::jsonb AS d, u.n, u.e "
    "FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::int[], %s::text[], %s::text[], %s::bigint[]) "
    "AS u(p, s, t, v, d, n, e)) r"
)
_INSERT_SNAPSHOT = _insert_rows("saga_actors_snapshots") + (
    " ON CONFLICT (persistence_id, sequence_nr) DO UPDATE SET type = excluded.type, "
    "version = excluded.version, data = excluded.data, checksum = excluded.checksum, "
    "written_at = excluded.written_at"
)
_UPDATE_STREAMS = (
    "UPDATE saga_actors_streams s SET highest_sequence_nr = u.h, last_type = u.t, owner = u.o "
    "FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[]) AS u(p, h, t, o) "
    "WHERE s.persistence_id = u.p"
)
_EPOCH = "extract(epoch FROM {})::float8"  # a timestamptz as unix seconds


class PostgresUnavailable(ConnectionError):
    """The database cannot be reached, or the connection was lost during an operation.

    The message names the journal by its URL without the password. An
    operation that failed with it while committing may have been stored:
    read before retrying it (appends: `highest_sequence_nr`).
    """


class PostgresJournalInUse(JournalInUse):
    """The journal's advisory lock is held in a way `mode` cannot share: a "writer" excludes every
    other writer and node; nodes share it among themselves.

    `path` is the URL without its password; `holder_pid` the holder's
    PostgreSQL backend pid if it could be read from pg_locks, else None;
    `holder` what is known of the holder (its mode, its process and host).
    """

    def __init__(self, path: str, holder_pid: int | None, holder: str = "") -> None:
        this_process = "this process" in holder
        RuntimeError.__init__(
            self,
            f"journal {path} is in use by {holder or 'another journal object'}"
            + (f" (PostgreSQL backend pid {holder_pid})" if holder_pid is not None else "")
            + (
                ": close that journal object first"
                if this_process
                else ": a writer excludes every other writer and every node; stop it first"
            ),
        )
        self.path = path
        self.holder_pid = holder_pid
        self.holder = holder

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.holder_pid, self.holder)


def safe_url(url: str) -> str:
    """`url` without its password, for messages and logs: `postgresql://user:pw@host/db?password=x`
    -> `postgresql://user@host/db`; a key=value connection string loses its `password=...`."""
    if "://" not in url:
        return re.sub(r"\s*\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S*)", "", url).strip()
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}@{hosts}"
    query = urllib.parse.urlencode(
        [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True) if k != "password"]
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _password(url: str) -> str:
    """The password in `url`, if any ("" if none or unreadable), to scrub it from driver messages."""
    try:
        return str(conninfo_to_dict(url).get("password") or "")
    except Exception:  # an unreadable connection string: its own error says so, scrubbed by URL
        if "://" not in url:
            return ""
        return urllib.parse.urlsplit(url).password or ""


def _require_driver() -> None:
    if _DRIVER_MISSING is not None:
        raise ImportError(
            "PostgresJournal needs psycopg 3 and psycopg-pool: install the extra saga-actors[postgres] "
            f"(pip install 'saga-actors[postgres]'): {_DRIVER_MISSING}"
        ) from _DRIVER_MISSING


# --- what jsonb cannot hold ----------------------------------------------------------------

_SUSPECT = re.compile(r"NaN|Infinity|\\u0000|\\u[dD][89a-fA-F]")


def _jsonb_problem(data: str) -> str | None:
    """Why the codec's JSON `data` cannot be stored as jsonb, or None. Looked for only when a
    cheap scan finds a suspect (NaN, an escaped NUL or surrogate): the usual event pays nothing."""
    if not _SUSPECT.search(data):
        return None
    import json

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        value = json.loads(data, parse_constant=refuse)
    except ValueError as error:
        return f"{error} is not a JSON number, and PostgreSQL's jsonb cannot hold it"
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "a string holds U+0000 (NUL), which PostgreSQL's text and jsonb cannot hold"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone surrogate, which is not text PostgreSQL can hold"
    return None


def _id_problem(persistence_id: str) -> str | None:
    if "\x00" in persistence_id:
        return "holds U+0000 (NUL), which PostgreSQL's text cannot hold"
    try:
        persistence_id.encode("utf-8")
    except UnicodeEncodeError:
        return "holds a lone surrogate, which is not text PostgreSQL can hold"
    return None


# --- the schema ----------------------------------------------------------------------------


def check_schema(conn: psycopg.Connection[Any], shown: str, *, create: bool) -> int:
    """Check (and with `create`, create) the journal's schema on `conn`; return its version.

    In one transaction under `pg_advisory_xact_lock(SCHEMA_LOCK_KEY)`, so
    that several nodes starting at once create it once. Raises `NotAJournal`
    (naming `shown`, the URL without its password) if the database's encoding
    is not UTF8, if it holds a journal of a newer schema version (the message
    names both; nothing is changed), or, without `create`, if it holds no
    journal. `conn` must not be in a transaction.
    """
    encoding = conn.execute("SHOW server_encoding").fetchone()
    if encoding is None or encoding[0] != "UTF8":
        found = encoding[0] if encoding else "unknown"
        raise NotAJournal(shown, f"the database's encoding is {found}; a journal needs UTF8")
    with conn.transaction():
        if create:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        exists = conn.execute("SELECT to_regclass('saga_actors_schema') IS NOT NULL").fetchone()
        version: int | None = None
        if exists and exists[0]:
            row = conn.execute("SELECT max(version) FROM saga_actors_schema").fetchone()
            version = row[0] if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise NotAJournal(
                shown,
                f"its schema version is {version}, and this library reads and writes version "
                f"{SCHEMA_VERSION}: made by a newer saga-actors? Open it with that version",
            )
        if not create:
            if version is None:
                raise NotAJournal(
                    shown, "the database holds no saga-actors journal (no table saga_actors_schema)"
                )
            return version
        conn.execute(SCHEMA)
        if version is None:
            conn.execute("INSERT INTO saga_actors_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            logger.info("journal %s: schema version %d created", shown, SCHEMA_VERSION)
        return SCHEMA_VERSION


def lock_holders(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The sessions holding the journal's advisory lock, other than `conn`'s: for each,
    `{"mode": "writer" | "node", "backend_pid": int, "pid": int | None, "host": str | None}`
    (`pid` is the client's process id, as a journal records it in its application name)."""
    rows = conn.execute(
        "SELECT l.mode, l.pid, a.application_name, host(a.client_addr) FROM pg_locks l "
        "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid = 0 AND l.objid::bigint = %s AND l.objsubid = 1 "
        "AND l.granted AND l.pid <> pg_backend_pid() ORDER BY l.pid",
        (WRITER_LOCK_KEY,),
    ).fetchall()
    holders = []
    for lock_mode, backend_pid, application, host in rows:
        found = re.search(r"\bpid (\d+)", application or "")
        holders.append(
            {
                "mode": "writer" if lock_mode == "ExclusiveLock" else "node",
                "backend_pid": backend_pid,
                "pid": int(found.group(1)) if found else None,
                "host": host,
            }
        )
    return holders


def copy_for_inspection(url: str) -> tuple[sqlite3.Connection, int, int, dict[str, int | None] | None]:
    """The journal at `url` copied into an in-memory SQLite database with the SQLite journal's
    tables (data as jsonb's text, checksums as stored), read in one REPEATABLE READ, READ ONLY
    transaction without any lock: (the copy, its schema version, the tables' size in bytes,
    `{"pid": ...}` of a process holding the journal's lock, a writer first, or None).

    For the inspector. Raises `NotAJournal` (no journal, a newer one, not UTF8) and
    `PostgresUnavailable` (cannot connect), naming the URL without its password.
    """
    _require_driver()
    shown = safe_url(url)
    try:
        conn = psycopg.connect(
            url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="saga-actors inspector"
        )
    except psycopg.Error as failed:
        secret = _password(url)
        message = str(failed).strip().replace(url, shown)
        raise PostgresUnavailable(
            f"journal {shown}: cannot connect: {message.replace(secret, '***') if secret else message}"
        ) from None
    copy = sqlite3.connect(":memory:")
    try:
        version = check_schema(conn, shown, create=False)
        holders = lock_holders(conn)
        holder = next((h for h in holders if h["mode"] == "writer"), holders[0] if holders else None)
        copy.executescript(SQLITE_SCHEMA)
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            for table, columns in (
                ("streams", "persistence_id, highest_sequence_nr, deleted_to"),
                ("events", f"persistence_id, sequence_nr, {_EPOCH.format('written_at')}, "),
                ("snapshots", f"persistence_id, sequence_nr, {_EPOCH.format('written_at')}, "),
            ):
                if table != "streams":
                    columns += "type, version, data::text, checksum"
                width = columns.count(",") + 1
                with conn.cursor(name=f"copy_{table}") as cursor:  # server side: read in chunks
                    cursor.execute(f"SELECT {columns} FROM saga_actors_{table}")
                    while rows := cursor.fetchmany(10_000):
                        copy.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * width)})", rows)
            size = conn.execute(
                "SELECT sum(pg_total_relation_size(t)) FROM unnest(%s::regclass[]) AS t",
                ([f"saga_actors_{t}" for t in ("streams", "events", "snapshots", "nodes", "schema")],),
            ).fetchone()
        copy.execute(f"PRAGMA user_version = {int(version)}")
    except BaseException:
        copy.close()
        raise
    finally:
        conn.close()
    return copy, version, int(size[0]) if size else 0, None if holder is None else {"pid": holder["pid"]}


# --- the writer's operations -----------------------------------------------------------------


class _Op(QueuedWrite):
    """A unit of work for the writer thread (see `QueuedWrite`).

    An append carries its rows (five parallel lists, see `_insert_rows`);
    anything else carries `run`, a function of a cursor run inside the
    batch's transaction (in a savepoint). `fence`: the writer's lease,
    checked in the same transaction; `persistence_id`: the stream it writes.
    """

    __slots__ = ("events", "expected", "fence", "last_type", "persistence_id", "run")

    def __init__(
        self,
        persistence_id: str | None,
        fence: Fence | None,
        *,
        run: Callable[[psycopg.Cursor[Any]], Any] | None = None,
        events: list[tuple[int, str, int, str]] | None = None,
        expected: int = 0,
        callback: AppendCallback | None = None,
    ) -> None:
        self.persistence_id = persistence_id
        self.fence = fence
        self.run = run
        self.events = events  # (sequence number, type, version, JSON) of an append
        self.expected = expected
        self.last_type = events[-1][1] if events else None
        super().__init__(callback)


class PostgresJournal:
    """Journal, snapshot store and `LeaseStore` in a PostgreSQL database.

    `url`: a libpq connection string, `postgresql://user:password@host:port/db`
    (or `key=value ...`); its password never appears in a log record, an
    exception message or this object's repr. `codec`: the registered types.
    `mode`:

    - "writer": the journal's only writer (a one-node system): holds a
      session-level advisory lock exclusively, so a second writer, or a
      node, is refused with `PostgresJournalInUse` (a `JournalInUse`).
    - "node": one of several nodes sharing the journal: holds the lock
      shared (nodes coexist; a writer excludes them). Writes go through
      `fenced(fence)` handles (unfenced writes are allowed too).
    - "reader": no lock, no writes (they raise RuntimeError), no schema
      creation: a database without a journal is `NotAJournal`. The inspector's.

    `group_commit=False` writes one transaction per operation (for
    comparison); `max_batch` bounds the operations in one transaction;
    `pool_size` the readers' connections; `channel` is the LISTEN/NOTIFY
    channel of `publish`/`subscribe`. `lease_call_timeout` (seconds) bounds
    each lease call's waits for locks and statements; `writer_idle_timeout`
    (seconds) is how long the server lets the writer's transaction sit idle
    before it ends it (a node paused mid-write then holds no lock longer).

    The constructor opens the journal (see `open()`). Threads: see the module
    docstring. Reads and writes may come from any thread; `open()` and
    `close()` must not race each other.
    """

    def __init__(
        self,
        url: str,
        codec: EventCodec,
        *,
        mode: Mode = "writer",
        group_commit: bool = True,
        max_batch: int = 1000,
        pool_size: int = 4,
        channel: str = "saga_actors",
        lease_call_timeout: float = LEASE_CALL_TIMEOUT,
        writer_idle_timeout: float = WRITER_IDLE_IN_TRANSACTION,
    ) -> None:
        problems = []
        for name, seconds in (
            ("lease_call_timeout", lease_call_timeout),
            ("writer_idle_timeout", writer_idle_timeout),
        ):
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, (int, float))
                or not 0.01 <= seconds <= 3600
            ):
                problems.append(f"{name} must be a number of seconds from 0.01 to 3600, got {seconds!r:.40}")
        if mode not in MODES:
            problems.append(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            problems.append(f"max_batch must be a whole number of at least 1, got {max_batch!r}")
        if not isinstance(pool_size, int) or pool_size < 1:
            problems.append(f"pool_size must be a whole number of at least 1, got {pool_size!r}")
        if not channel or len(channel.encode("utf-8", "replace")) > 63 or "\x00" in channel:
            problems.append(f"channel must be 1 to 63 bytes without NUL, got {channel!r:.80}")
        if problems:
            raise ValueError("; ".join(problems))
        _require_driver()
        self._url = url
        self.path = safe_url(url)  # what messages call it (JournalInUse and NotAJournal name a `path`)
        self._secret = _password(url)
        self.codec = codec
        self.mode: Mode = mode
        self.channel = channel
        self._max_batch = max_batch if group_commit else 1
        self.lease_call_timeout = float(lease_call_timeout)
        self.writer_idle_timeout = float(writer_idle_timeout)
        self._pool_size = pool_size
        self._queue_lock = threading.Lock()  # nothing is queued behind the writer's stop
        self._closed = True
        self.transactions = 0  # for measurements: operations / transactions = batch size
        self.operations = 0
        # For tests: called in the writer thread inside each batch's transaction, before COMMIT
        # (its row locks held), to hold a write in flight.
        self.before_commit: Callable[[], None] | None = None
        self.open()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"PostgresJournal({self.path!r}, mode={self.mode!r}, {state})"

    # --- lifecycle ---

    def open(self) -> None:
        """Connect, take the advisory lock (writer, node), check or create the schema, start the
        writer thread; idempotent. Runs in the caller's thread.

        Raises `PostgresUnavailable` if the database cannot be reached (the
        driver's reason, without the password), `PostgresJournalInUse` if the
        lock is held in a way this mode cannot share, `NotAJournal` for a
        database of a newer schema version (left untouched), one whose
        encoding is not UTF8, or (reader) one without a journal. A failed open
        leaves nothing running, nothing open and nothing locked.
        """
        if not self._closed:
            return
        lock: psycopg.Connection[Any] | None = None
        pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        try:
            if self.mode != "reader":
                lock = self._take_lock()
                check_schema(lock, self.path, create=True)
            else:
                with self._connect("reader") as conn:
                    check_schema(conn, self.path, create=False)
            pool = psycopg_pool.ConnectionPool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                kwargs=self._connect_options("pool"),
                check=psycopg_pool.ConnectionPool.check_connection,
                timeout=RECONNECT_SECONDS,
                open=False,
                name=f"saga-actors-journal-{id(self):x}",
            )
            pool.open(wait=True, timeout=RECONNECT_SECONDS)
        except BaseException as error:
            if pool is not None:
                pool.close()
            if lock is not None:
                _release_lock(lock)  # at once: the server frees a closed session's lock a little later
            if isinstance(error, psycopg.OperationalError):
                raise self._unavailable("cannot connect", error) from None
            raise
        self._lock_conn = lock
        self._lock_retry_at = 0.0
        self._pool = pool
        self._writer_conn: psycopg.Connection[Any] | None = None
        self._outage_since: float | None = None
        self._subscribers: list[Callable[[str], None]] = []
        self._listener: threading.Thread | None = None
        self._listener_stop = threading.Event()
        self._listening = threading.Event()
        self._stopping = threading.Event()
        self._writes = None if self.mode == "reader" else WriteQueue(self.path, self._max_batch, self._write)
        self._closed = False

    def close(self) -> None:
        """Finish the queued writes, stop the writer and the listener, close the connections and
        release the advisory lock; idempotent. Runs in the caller's thread and waits for the
        journal's threads. Writes submitted after it starts raise RuntimeError ("closed")."""
        with self._queue_lock:
            if self._closed:
                return
            self._closed = True
            self._stopping.set()
        try:
            if self._writes is not None:
                self._writes.stop(after=self._close_writer_connection)
            self._listener_stop.set()
            if self._listener is not None:
                self._listener.join()
        finally:
            try:
                self._pool.close()
            finally:
                if self._lock_conn is not None:
                    _release_lock(self._lock_conn)

    def flush(self) -> None:
        """Return once every write submitted before the call is done (durable or failed)."""
        if self.mode != "reader":
            self._submit(_Op(None, None, run=lambda cur: None))

    # --- journal ---

    def append(self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int) -> int:
        """Store `events` atomically after `expected_sequence_nr`; return the new highest.

        Raises SerializationError (before anything is sent) if an event cannot
        be encoded or stored as jsonb, ValueError for a persistence id
        PostgreSQL cannot hold, ConcurrencyError if `expected_sequence_nr` is
        not the stream's highest in the database (another process may have
        written it), RuntimeError if the journal is closed or a reader,
        `PostgresUnavailable` if the connection was lost (the append may have
        been stored if it was lost while committing), or the driver's
        `psycopg.Error` if the transaction fails otherwise.
        """
        result: int = self._submit(self._append_op(persistence_id, events, expected_sequence_nr, None))
        return result

    def append_async(
        self,
        persistence_id: str,
        events: Sequence[Any],
        expected_sequence_nr: int,
        on_done: AppendCallback,
    ) -> None:
        """Like `append`, without waiting: `on_done(new_highest, None)` or `on_done(None, error)`,
        called in the writer thread, in the order the appends were made."""
        self._enqueue(self._append_op(persistence_id, events, expected_sequence_nr, None, on_done))

    def replay(
        self,
        persistence_id: str,
        from_sequence_nr: int = 1,
        to_sequence_nr: int = MAX_SEQUENCE_NR,
        max_count: int = MAX_SEQUENCE_NR,
    ) -> list[PersistentEvent]:
        """Events with from <= sequence_nr <= to, oldest first, at most `max_count`.

        One statement (one snapshot of the database). Every row is checked:
        raises `JournalCorrupted` naming the persistence id and sequence
        number if an event is missing (a gap, or fewer rows than the stream's
        highest promises), if its checksum does not match what it stores
        (changed after it was written), or if it does not decode.
        """
        if max_count <= 0:
            return []
        rows = self._read(
            f"SELECT s.highest_sequence_nr, s.deleted_to, e.sequence_nr, {_EPOCH.format('e.written_at')}, "
            "e.type, e.version, e.data::text, e.checksum FROM saga_actors_streams s LEFT JOIN LATERAL ("
            "SELECT * FROM saga_actors_events e WHERE e.persistence_id = s.persistence_id AND e.sequence_nr "
            "BETWEEN greatest(%s, s.deleted_to + 1, 1) AND least(%s, s.highest_sequence_nr) "
            "ORDER BY e.sequence_nr LIMIT %s) e ON true WHERE s.persistence_id = %s",
            (from_sequence_nr, to_sequence_nr, max_count, persistence_id),
        )
        if not rows:
            return []
        highest, deleted_to = rows[0][0], rows[0][1]
        start = max(from_sequence_nr, deleted_to + 1, 1)
        end = min(to_sequence_nr, highest)
        if start > end:
            return []
        limit = min(max_count, end - start + 1)
        result = []
        for expected, (_, _, sequence_nr, timestamp, type_name, version, data, checksum) in enumerate(
            rows, start=start
        ):
            if sequence_nr is None:
                break
            if sequence_nr != expected:
                raise JournalCorrupted(
                    persistence_id, expected, f"event missing (next stored is #{sequence_nr})"
                )
            value = self._decode(persistence_id, sequence_nr, type_name, version, data, checksum)
            result.append(PersistentEvent(persistence_id, sequence_nr, value, timestamp))
        if len(result) < limit:
            raise JournalCorrupted(persistence_id, start + len(result), "event missing")
        return result

    def highest_sequence_nr(self, persistence_id: str) -> int:
        rows = self._read(
            "SELECT highest_sequence_nr FROM saga_actors_streams WHERE persistence_id = %s",
            (persistence_id,),
        )
        return int(rows[0][0]) if rows else 0

    def persistence_ids(self, prefix: str = "") -> list[str]:
        """The streams' ids that start with `prefix`, sorted (as Python sorts strings)."""
        rows = self._read(
            "SELECT persistence_id FROM saga_actors_streams WHERE starts_with(persistence_id, %s) "
            "AND highest_sequence_nr > 0 ORDER BY persistence_id",
            (prefix,),
        )
        return [row[0] for row in rows]

    def open_persistence_ids(self, prefix: str, final_types: tuple[type, ...]) -> list[str]:
        """Ids with the prefix whose last event is not of one of `final_types` (read from the
        streams' `last_type`, without reading any stream), sorted."""
        return self._open_ids(prefix, final_types, None)

    def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        self._submit(self._delete_op(persistence_id, to_sequence_nr, None))

    # --- snapshots ---

    def save_snapshot(self, persistence_id: str, sequence_nr: int, snapshot: Any) -> None:
        """Store `snapshot` as the state after event `sequence_nr`, replacing one there.

        Raises SerializationError if it cannot be encoded, RuntimeError if the
        journal is closed or a reader, `PostgresUnavailable` or `psycopg.Error`
        if the write fails.
        """
        self._submit(self._snapshot_op(persistence_id, sequence_nr, snapshot, None))

    def delete_snapshots(self, persistence_id: str, max_sequence_nr: int) -> None:
        self._submit(self._delete_snapshots_op(persistence_id, max_sequence_nr, None))

    def load_snapshot(
        self, persistence_id: str, max_sequence_nr: int = MAX_SEQUENCE_NR
    ) -> SelectedSnapshot | None:
        """The most recent snapshot at or below `max_sequence_nr`, if any; `JournalCorrupted`
        naming it if it does not match its checksum or does not decode (an older one is not
        silently used instead)."""
        rows = self._read(
            f"SELECT sequence_nr, {_EPOCH.format('written_at')}, type, version, data::text, checksum "
            "FROM saga_actors_snapshots WHERE persistence_id = %s AND sequence_nr <= %s "
            "ORDER BY sequence_nr DESC LIMIT 1",
            (persistence_id, max_sequence_nr),
        )
        if not rows:
            return None
        sequence_nr, timestamp, type_name, version, data, checksum = rows[0]
        snapshot = self._decode(persistence_id, sequence_nr, type_name, version, data, checksum, "snapshot")
        return SelectedSnapshot(persistence_id, sequence_nr, snapshot, timestamp)

    # --- leases (LeaseStore) ---

    def acquire_lease(self, node_id: str, seconds: float) -> Fence | None:
        """See `LeaseStore.acquire_lease`; timed by the database's clock. ValueError for a node id
        or a duration out of bounds (`check_node_id`, `check_lease_seconds`)."""
        self._check_lease_arguments(node_id, seconds)
        with self._transaction() as cur:
            row = cur.execute(
                "INSERT INTO saga_actors_nodes AS n (node_id, epoch, expires_at) "
                "VALUES (%s, 1, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT (node_id) DO UPDATE SET epoch = n.epoch + 1, expires_at = excluded.expires_at "
                "WHERE n.expires_at <= clock_timestamp() RETURNING epoch",
                (node_id, float(seconds)),
            ).fetchone()
        return Fence(node_id, int(row[0])) if row else None

    def renew_lease(self, fence: Fence, seconds: float) -> bool:
        self._check_lease_arguments(fence.node_id, seconds)
        with self._transaction() as cur:
            row = cur.execute(
                "UPDATE saga_actors_nodes SET expires_at = clock_timestamp() + make_interval(secs => %s) "
                "WHERE node_id = %s AND epoch = %s AND expires_at > clock_timestamp() RETURNING 1",
                (float(seconds), fence.node_id, fence.epoch),
            ).fetchone()
        return row is not None

    def release_lease(self, fence: Fence) -> None:
        with self._transaction() as cur:
            cur.execute(
                "UPDATE saga_actors_nodes SET expires_at = clock_timestamp() "
                "WHERE node_id = %s AND epoch = %s AND expires_at > clock_timestamp()",
                (fence.node_id, fence.epoch),
            )

    def leases(self) -> list[NodeLease]:
        rows = self._read(
            f"SELECT node_id, epoch, {_EPOCH.format('expires_at')} - {_EPOCH.format('clock_timestamp()')} "
            "FROM saga_actors_nodes ORDER BY node_id",
            (),
        )
        return [NodeLease(node_id, int(epoch), float(left)) for node_id, epoch, left in rows]

    def take_over(
        self, dead: Fence, by: Fence, prefix: str, final_types: tuple[type, ...]
    ) -> list[str] | None:
        """See `LeaseStore.take_over`. One transaction: `by`'s lease checked live (FOR SHARE),
        `dead`'s epoch bumped if it is still at `dead.epoch` and expired (the UPDATE waits for
        a write of `dead` in flight, which holds its row FOR SHARE), then its open streams with
        `prefix` (by their last event's type) given to `by`. None, with nothing changed, if the
        dead node's write in flight holds its row for more than `LEASE_CALL_TIMEOUT` (its
        transaction is ended by the server after `WRITER_IDLE_IN_TRANSACTION`: the next try
        goes ahead)."""
        names = [self.codec.name_of(cls) for cls in final_types]
        try:
            return self._take_over(dead, by, prefix, names)
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            logger.info(
                "journal %s: node %s still has a write in flight; taking it over later",
                self.path,
                dead.node_id,
            )
            return None

    def _take_over(self, dead: Fence, by: Fence, prefix: str, names: list[str]) -> list[str] | None:
        with self._transaction() as cur:
            live = cur.execute(
                "SELECT 1 FROM saga_actors_nodes WHERE node_id = %s AND epoch = %s "
                "AND expires_at > clock_timestamp() FOR SHARE",
                (by.node_id, by.epoch),
            ).fetchone()
            if live is None:
                raise LeaseLost(by.node_id, by.epoch, None, "lease lost: cannot take over")
            fenced_off = cur.execute(
                "UPDATE saga_actors_nodes SET epoch = epoch + 1, expires_at = '-infinity' "
                "WHERE node_id = %s AND epoch = %s "
                "AND expires_at <= clock_timestamp() RETURNING 1",
                (dead.node_id, dead.epoch),
            ).fetchone()
            if fenced_off is None:
                return None
            rows = cur.execute(
                "UPDATE saga_actors_streams SET owner = %s WHERE owner = %s "
                "AND starts_with(persistence_id, %s) AND (last_type IS NULL OR NOT last_type = ANY(%s)) "
                "RETURNING persistence_id",
                (by.node_id, dead.node_id, prefix, names),
            ).fetchall()
        return sorted(row[0] for row in rows)

    def owner(self, persistence_id: str) -> str | None:
        rows = self._read(
            "SELECT owner FROM saga_actors_streams WHERE persistence_id = %s", (persistence_id,)
        )
        return rows[0][0] if rows else None

    def fenced(self, fence: Fence) -> JournalWithSnapshots:
        """A handle whose writes are fenced by `fence`, checked in the writer's transaction (see
        `LeaseStore.fenced`)."""
        return _FencedPostgres(self, fence)

    def publish(self, *payloads: str) -> None:
        """NOTIFY the journal's channel with each payload (at most 1,000 characters, no NUL; else
        ValueError, and nothing is sent). Sent at once, all in one transaction (one commit)."""
        for payload in payloads:
            if len(payload) > MAX_NOTICE or "\x00" in payload:
                raise ValueError(
                    f"a notice is at most {MAX_NOTICE} characters without NUL, got {len(payload)} characters"
                )
        if not payloads:
            return
        with self._transaction() as cur:
            cur.execute(
                "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) WITH ORDINALITY AS u(p, n) ORDER BY n",
                (self.channel, list(payloads)),
            )

    def subscribe(self, on_notice: Callable[[str], None]) -> Callable[[], None]:
        """Call `on_notice(payload)` in the listener thread ("journal-listener") for each notice
        on the channel from now on: returns once the listener is listening (PostgresUnavailable
        if it cannot within RECONNECT_SECONDS). The listener reconnects after a lost connection
        (notices sent meanwhile are missed). Returns the function that unsubscribes."""
        with self._queue_lock:
            if self._closed:
                raise RuntimeError(f"journal {self.path} is closed")
            self._subscribers.append(on_notice)
            if self._listener is None:
                self._listener = threading.Thread(
                    target=self._listen_loop, name="journal-listener", daemon=True
                )
                self._listener.start()
        if not self._listening.wait(RECONNECT_SECONDS):
            raise PostgresUnavailable(f"journal {self.path}: the listener could not LISTEN on {self.channel}")

        def unsubscribe() -> None:
            with self._queue_lock:
                if on_notice in self._subscribers:
                    self._subscribers.remove(on_notice)

        return unsubscribe

    # --- for the fenced handles ---

    def _open_ids(self, prefix: str, final_types: tuple[type, ...], owner: str | None) -> list[str]:
        names = [self.codec.name_of(cls) for cls in final_types]
        rows = self._read(
            "SELECT persistence_id FROM saga_actors_streams WHERE starts_with(persistence_id, %s) "
            "AND highest_sequence_nr > 0 AND (last_type IS NULL OR NOT last_type = ANY(%s)) "
            "AND (%s::text IS NULL OR owner = %s) ORDER BY persistence_id",
            (prefix, names, owner, owner),
        )
        return [row[0] for row in rows]

    def _append_op(
        self,
        persistence_id: str,
        events: Sequence[Any],
        expected_sequence_nr: int,
        fence: Fence | None,
        callback: AppendCallback | None = None,
    ) -> _Op:
        # Encoded in the caller's thread: a value that cannot be stored fails here, at its source.
        problem = _id_problem(persistence_id)
        if problem is not None:
            raise ValueError(f"persistence id {persistence_id!r:.80} {problem}")
        encoded = []
        for sequence_nr, event in enumerate(events, start=expected_sequence_nr + 1):
            type_name, version, data = self.codec.encode(event)
            problem = _jsonb_problem(data)
            if problem is not None:
                raise SerializationError(f"{type_name}: {problem}")
            encoded.append((sequence_nr, type_name, version, data))
        return _Op(persistence_id, fence, events=encoded, expected=expected_sequence_nr, callback=callback)

    def _snapshot_op(self, persistence_id: str, sequence_nr: int, snapshot: Any, fence: Fence | None) -> _Op:
        type_name, version, data = self.codec.encode(snapshot)
        problem = _id_problem(persistence_id) or _jsonb_problem(data)
        if problem is not None:
            raise SerializationError(f"snapshot of {persistence_id!r:.80} ({type_name}): {problem}")
        arrays = ([persistence_id], [sequence_nr], [type_name], [version], [data])

        def run(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(_INSERT_SNAPSHOT, arrays)

        return _Op(persistence_id, fence, run=run)

    @staticmethod
    def _delete_op(persistence_id: str, to_sequence_nr: int, fence: Fence | None) -> _Op:
        def run(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(
                "DELETE FROM saga_actors_events WHERE persistence_id = %s AND sequence_nr <= %s",
                (persistence_id, to_sequence_nr),
            )
            # The last event deleted: the stream cannot be known finished (open_persistence_ids).
            cur.execute(
                "UPDATE saga_actors_streams "
                "SET deleted_to = greatest(deleted_to, least(%s, highest_sequence_nr)), "
                "last_type = CASE WHEN %s >= highest_sequence_nr THEN NULL ELSE last_type END "
                "WHERE persistence_id = %s",
                (to_sequence_nr, to_sequence_nr, persistence_id),
            )

        return _Op(persistence_id, fence, run=run)

    @staticmethod
    def _delete_snapshots_op(persistence_id: str, max_sequence_nr: int, fence: Fence | None) -> _Op:
        def run(cur: psycopg.Cursor[Any]) -> None:
            cur.execute(
                "DELETE FROM saga_actors_snapshots WHERE persistence_id = %s AND sequence_nr <= %s",
                (persistence_id, max_sequence_nr),
            )

        return _Op(persistence_id, fence, run=run)

    # --- internals: connections ---

    def _connect_options(self, role: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": f"saga-actors {self.mode} {role} pid {os.getpid()}",
        }
        if role in ("writer", "pool"):  # the writes and the lease calls; not the inspector's reads
            milliseconds = int(self.writer_idle_timeout * 1000)
            options["options"] = f"-c idle_in_transaction_session_timeout={milliseconds}"
        return options

    def _connect(self, role: str) -> psycopg.Connection[Any]:
        """A new connection (autocommit); PostgresUnavailable, without the password, if it fails."""
        try:
            return psycopg.connect(self._url, **self._connect_options(role))
        except psycopg.Error as error:
            raise self._unavailable("cannot connect", error) from None

    def _unavailable(self, what: str, error: BaseException) -> PostgresUnavailable:
        return PostgresUnavailable(f"journal {self.path}: {what}: {self._scrub(str(error).strip())}")

    def _scrub(self, text: str) -> str:
        """`text` without the URL's password (a driver message may quote the connection string)."""
        text = text.replace(self._url, self.path)
        if self._secret:
            for form in {self._secret, urllib.parse.quote(self._secret, safe="")}:
                text = text.replace(form, "***")
        return text

    def _take_lock(self) -> psycopg.Connection[Any]:
        """A connection holding the journal's advisory lock (exclusive for a writer, shared for a
        node); PostgresJournalInUse naming the holder if it is held in a way that excludes us."""
        conn = self._connect("lock")
        try:
            function = "pg_try_advisory_lock" if self.mode == "writer" else "pg_try_advisory_lock_shared"
            row = conn.execute(f"SELECT {function}(%s)", (WRITER_LOCK_KEY,)).fetchone()
            if row is not None and row[0]:
                return conn
            holders = lock_holders(conn)
        except BaseException:
            conn.close()
            raise
        conn.close()
        holder = next((h for h in holders if h["mode"] == "writer"), holders[0] if holders else None)
        if holder is None:
            raise PostgresJournalInUse(self.path, None)
        described = "a writer" if holder["mode"] == "writer" else "nodes (mode='node')"
        if holder["pid"] is not None:
            described += f", process {holder['pid']}" + (f" on {holder['host']}" if holder["host"] else "")
            if holder["pid"] == os.getpid() and holder["host"] in (None, "127.0.0.1", "::1"):
                described += " (this process: another journal object)"
        raise PostgresJournalInUse(self.path, holder["backend_pid"], described)

    def _retake_lock(self) -> None:
        """After a reconnect (writer thread): take the advisory lock again if its session died; a
        warning if it cannot be (another writer took it meanwhile), retried at most every 10 s."""
        conn = self._lock_conn
        if conn is not None and not conn.closed:
            try:
                conn.execute("SELECT 1")  # an idle connection's death is seen only when used
                return
            except psycopg.Error:
                pass
        if time.monotonic() < self._lock_retry_at:
            return
        if conn is not None:
            conn.close()
        self._lock_conn = None
        try:
            self._lock_conn = self._take_lock()
            logger.info("journal %s: advisory lock taken again after the reconnect", self.path)
        except (JournalInUse, PostgresUnavailable) as error:
            self._lock_retry_at = time.monotonic() + 10
            logger.warning(
                "journal %s: cannot take the journal's lock again after the reconnect (%s); writing on, "
                "guarded by optimistic concurrency only",
                self.path,
                error,
            )

    def _read(self, query: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The rows of a read on a pooled connection (checked as it is lent, so a restarted
        server is reconnected to); PostgresUnavailable if none can be had."""
        try:
            with self._pool.connection() as conn:
                return conn.execute(query, parameters).fetchall()
        except psycopg.OperationalError as error:
            raise self._unavailable("read failed", error) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """A transaction on a pooled connection (the lease calls); RuntimeError for a reader,
        PostgresUnavailable if the connection fails (the outcome of a failed COMMIT is unknown)."""
        if self.mode == "reader":
            raise RuntimeError(f"journal {self.path} is open read-only (mode='reader')")
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                milliseconds = str(int(self.lease_call_timeout * 1000))
                cur.execute(
                    "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                    (milliseconds, milliseconds),
                )
                yield cur
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            raise  # the server is there: a lock was held too long (see LEASE_CALL_TIMEOUT)
        except psycopg.OperationalError as error:
            raise self._unavailable("lost the connection", error) from None

    def _check_lease_arguments(self, node_id: str, seconds: float) -> None:
        problems = check_node_id(node_id) + check_lease_seconds(seconds)
        if problems:
            raise ValueError("; ".join(problems))

    # --- internals: decoding ---

    def _decode(
        self,
        persistence_id: str,
        sequence_nr: int,
        type_name: str,
        version: int,
        data: str,
        checksum: int,
        what: str = "event",
    ) -> Any:
        """The stored value, once its checksum and decoding both pass; else JournalCorrupted
        (decoding problems first, noting a checksum mismatch too)."""
        row = (persistence_id, sequence_nr, type_name, version, data)
        expected = row_checksum(*row)
        return decode_checked(self.codec, *row, checksum=checksum, expected=expected, what=what)

    # --- internals: the writer ---

    def _enqueue(self, operation: _Op) -> None:
        self._write_queue().put(operation)

    def _submit(self, operation: _Op) -> Any:
        return self._write_queue().submit(operation)

    def _write_queue(self) -> WriteQueue:
        """The writer's queue; RuntimeError for a reader or a closed journal."""
        if self._writes is None:
            raise RuntimeError(f"journal {self.path} is open read-only (mode='reader'): it cannot write")
        if self._closed:
            raise RuntimeError(f"journal {self.path} is closed")
        return self._writes

    def _close_writer_connection(self) -> None:
        """The writer thread's last act (see `WriteQueue.stop`)."""
        if self._writer_conn is not None:
            self._writer_conn.close()

    def _writer_connection(self) -> psycopg.Connection[Any]:
        """The writer's connection, reconnecting (with a backoff, for up to RECONNECT_SECONDS) if
        it was lost; logs the outage once and the recovery once. Raises PostgresUnavailable."""
        conn = self._writer_conn
        if conn is not None and not conn.broken and not conn.closed:
            return conn
        if conn is not None:
            conn.close()
            self._writer_conn = None
        deadline = time.monotonic() + RECONNECT_SECONDS
        delay = 0.05
        while True:
            try:
                conn = psycopg.connect(self._url, **self._connect_options("writer"))
                break
            except psycopg.Error as error:
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    logger.warning(
                        "journal %s: cannot connect to PostgreSQL (%s); reconnecting",
                        self.path,
                        self._scrub(str(error).strip()),
                    )
                if time.monotonic() + delay > deadline:
                    raise self._unavailable("cannot reconnect", error) from None
                if self._stopping.wait(delay):  # a backoff between attempts; close() cuts it short
                    raise self._unavailable("closed while reconnecting", error) from None
                delay = min(delay * 2, 1.0)
        if self._outage_since is not None:
            logger.info(
                "journal %s: reconnected to PostgreSQL after %.1f s",
                self.path,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
        self._writer_conn = conn
        self._retake_lock()
        return conn

    def _write(self, batch: list[_Op]) -> None:
        """One transaction for every operation in the batch; failed appends (ConcurrencyError,
        LeaseLost) fail alone, decided before anything is written."""
        try:
            conn = self._writer_connection()
            with conn.transaction(), conn.cursor() as cur:
                self._write_batch(cur, batch)
            self.transactions += 1
            self.operations += len(batch)
        except Exception as error:  # the transaction failed: nothing in it is durable (see below)
            failure: Exception = error
            if isinstance(error, psycopg.OperationalError) or (
                self._writer_conn is not None and self._writer_conn.broken
            ):
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    logger.warning(
                        "journal %s: lost the connection to PostgreSQL (%s); reconnecting",
                        self.path,
                        self._scrub(str(error).strip()),
                    )
                failure = self._unavailable(
                    "lost the connection during a write (if it was lost while committing, the write "
                    "may have been stored: read before retrying)",
                    error,
                )
            elif not isinstance(error, PostgresUnavailable):
                logger.exception("journal %s: write failed", self.path)
            for operation in batch:
                if operation.error is None:
                    operation.error = failure
                    operation.result = None

    def _write_batch(self, cur: psycopg.Cursor[Any], batch: list[_Op]) -> None:
        """The batch inside its transaction: fences, then the streams locked in order, then each
        operation checked against what the database holds (another process may have written)."""
        self._check_fences(cur, batch)
        live = [op for op in batch if op.error is None]
        new = sorted({op.persistence_id for op in live if op.events and op.persistence_id is not None})
        created = set()
        if new:  # rows to lock for streams never written; a race with another writer waits here
            created = {
                row[0]
                for row in cur.execute(
                    "INSERT INTO saga_actors_streams (persistence_id, highest_sequence_nr) "
                    "SELECT p, 0 FROM unnest(%s::text[]) AS p ORDER BY p "
                    "ON CONFLICT DO NOTHING RETURNING persistence_id",
                    (new,),
                ).fetchall()
            }
        touched = sorted({op.persistence_id for op in live if op.persistence_id is not None})
        streams: dict[str, list[Any]] = {}  # id -> [highest, last type, owner]
        if touched:
            for pid, highest, last_type, owner in cur.execute(
                "SELECT persistence_id, highest_sequence_nr, last_type, owner FROM saga_actors_streams "
                "WHERE persistence_id = ANY(%s) ORDER BY persistence_id FOR UPDATE",
                (touched,),
            ):
                streams[pid] = [highest, last_type, owner]
        rows: list[tuple[Any, ...]] = []
        dirty: set[str] = set()
        for op in live:
            if op.run is None:
                self._check_append(op, streams, rows, dirty)
                continue
            _check_owner(op, streams, claim=False)
            if op.error is not None:
                continue
            _flush(cur, rows, dirty, streams)  # keep the order of appends and other work
            try:
                with cur.connection.transaction():  # a savepoint: a failure is this operation's alone
                    op.result = op.run(cur)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as error:
                op.error = error
        _flush(cur, rows, dirty, streams)
        if self.before_commit is not None:
            self.before_commit()
        unused = [pid for pid in created if streams.get(pid, [0])[0] == 0]
        if unused:
            cur.execute(
                "DELETE FROM saga_actors_streams WHERE persistence_id = ANY(%s) AND highest_sequence_nr = 0",
                (unused,),
            )

    def _check_fences(self, cur: psycopg.Cursor[Any], batch: list[_Op]) -> None:
        """Lock each fenced node's row FOR SHARE (a take-over waits for this transaction) and fail
        with LeaseLost the operations whose lease is not live at their epoch."""
        fences = {op.fence for op in batch if op.fence is not None}
        if not fences:
            return
        held = {
            node_id: (epoch, live)
            for node_id, epoch, live in cur.execute(
                "SELECT node_id, epoch, expires_at > clock_timestamp() FROM saga_actors_nodes "
                "WHERE node_id = ANY(%s) ORDER BY node_id FOR SHARE",
                (sorted({f.node_id for f in fences}),),
            )
        }
        for op in batch:
            if op.fence is not None and held.get(op.fence.node_id) != (op.fence.epoch, True):
                op.error = LeaseLost(
                    op.fence.node_id, op.fence.epoch, op.persistence_id, "lease expired or taken over"
                )

    @staticmethod
    def _check_append(
        op: _Op, streams: dict[str, list[Any]], rows: list[tuple[Any, ...]], dirty: set[str]
    ) -> None:
        """Optimistic concurrency against the stream's row as locked in this transaction."""
        assert op.persistence_id is not None and op.events is not None
        pid = op.persistence_id
        if op.error is not None:  # its lease is lost (checked first, for the whole batch)
            return
        stream = streams.get(pid, [0, None, None])
        if stream[0] != op.expected:  # then the sequence: a stale writer learns that
            op.error = ConcurrencyError(
                f"{pid}: expected sequence number {op.expected}, journal is at {stream[0]}"
            )
            return
        if _check_owner(op, streams, claim=True):  # then the stream's owner
            return
        op.result = op.expected + len(op.events)
        if not op.events:
            return
        streams[pid] = [
            op.result,
            op.last_type,
            stream[2] if stream[2] is not None or op.fence is None else op.fence.node_id,
        ]
        node, epoch = (op.fence.node_id, op.fence.epoch) if op.fence is not None else (None, None)
        rows.extend((pid, *event, node, epoch) for event in op.events)
        dirty.add(pid)

    # --- internals: notices ---

    def _listen_loop(self) -> None:
        """The listener thread: LISTEN on its own connection, deliver each notice to the
        subscribers; reconnect after a lost connection (logged once per outage)."""
        outage: float | None = None
        delay = 0.05
        while not self._listener_stop.is_set():
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = psycopg.connect(self._url, **self._connect_options("listener"))
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                if outage is not None:
                    took = time.monotonic() - outage
                    logger.info("journal %s: listener reconnected after %.1f s", self.path, took)
                    outage, delay = None, 0.05
                self._listening.set()
                while not self._listener_stop.is_set():
                    for notice in conn.notifies(timeout=0.2):
                        self._deliver(notice.payload)
            except psycopg.Error as error:
                self._listening.clear()
                if outage is None:
                    outage = time.monotonic()
                    logger.warning(
                        "journal %s: listener lost its connection (%s); reconnecting",
                        self.path,
                        self._scrub(str(error).strip()),
                    )
                self._listener_stop.wait(delay)  # a backoff between attempts
                delay = min(delay * 2, 1.0)
            finally:
                if conn is not None:
                    conn.close()

    def _deliver(self, payload: str) -> None:
        with self._queue_lock:
            subscribers = list(self._subscribers)
        for on_notice in subscribers:
            try:
                on_notice(payload)
            except Exception:
                logger.exception("journal %s: notice callback failed", self.path)


def _release_lock(conn: psycopg.Connection[Any]) -> None:
    """Release the advisory lock, then close its connection. Released explicitly: a closed
    session's locks go only once its backend has exited, a moment later, and a journal opened
    right after this one closes (a restart) would be refused meanwhile."""
    try:
        conn.execute("SELECT pg_advisory_unlock_all()")
    except psycopg.Error:
        pass  # the session is gone already, and its locks with it
    finally:
        conn.close()


def _check_owner(op: _Op, streams: dict[str, list[Any]], *, claim: bool) -> bool:
    """LeaseLost for a fenced operation on a stream another node owns (or, unless it `claim`s a
    new stream, no node owns); True if the operation failed (then or before)."""
    if op.fence is None or op.persistence_id is None or op.error is not None:
        return op.error is not None
    highest, _, owner = streams.get(op.persistence_id, [0, None, None])
    if owner == op.fence.node_id or (owner is None and claim and highest == 0):
        return False
    shown = f"node {owner}" if owner is not None else "no node (written without a fence)"
    op.error = LeaseLost(
        op.fence.node_id, op.fence.epoch, op.persistence_id, f"the stream is owned by {shown}"
    )
    return True


def _flush(
    cur: psycopg.Cursor[Any],
    rows: list[tuple[Any, ...]],
    dirty: set[str],
    streams: dict[str, list[Any]],
) -> None:
    """Insert the pending event rows and update their streams: two statements for any number."""
    if not rows:
        return
    cur.execute(_INSERT_EVENTS, [list(column) for column in zip(*rows, strict=True)])
    ids = sorted(dirty)
    cur.execute(
        _UPDATE_STREAMS,
        (ids, [streams[p][0] for p in ids], [streams[p][1] for p in ids], [streams[p][2] for p in ids]),
    )
    rows.clear()
    dirty.clear()


class _FencedPostgres(FencedHandle):
    """A fenced handle on a `PostgresJournal` (see `LeaseStore.fenced`): writes carry the fence,
    checked in the writer's transaction; reads are the journal's."""

    def __init__(self, journal: PostgresJournal, fence: Fence) -> None:
        super().__init__(journal, fence)
        self._journal = journal

    def __repr__(self) -> str:
        return f"<fenced {self._journal!r} node {self.fence.node_id} epoch {self.fence.epoch}>"

    def append(self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int) -> int:
        """`PostgresJournal.append`, fenced: LeaseLost (nothing stored) if the lease is not live
        at the fence's epoch or the stream is another node's."""
        journal = self._journal
        operation = journal._append_op(persistence_id, events, expected_sequence_nr, self.fence)
        result: int = journal._submit(operation)
        return result

    def append_async(
        self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int, on_done: AppendCallback
    ) -> None:
        journal = self._journal
        operation = journal._append_op(persistence_id, events, expected_sequence_nr, self.fence, on_done)
        journal._enqueue(operation)

    def open_persistence_ids(self, prefix: str, final_types: tuple[type, ...]) -> list[str]:
        """Only the open streams this handle's node owns."""
        return self._journal._open_ids(prefix, final_types, self.fence.node_id)

    def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        self._journal._submit(self._journal._delete_op(persistence_id, to_sequence_nr, self.fence))

    def save_snapshot(self, persistence_id: str, sequence_nr: int, snapshot: Any) -> None:
        self._journal._submit(self._journal._snapshot_op(persistence_id, sequence_nr, snapshot, self.fence))

    def delete_snapshots(self, persistence_id: str, max_sequence_nr: int) -> None:
        self._journal._submit(self._journal._delete_snapshots_op(persistence_id, max_sequence_nr, self.fence))
