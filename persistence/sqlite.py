"""The SQLite journal and snapshot store: durable, embedded, one file.

WAL mode with `synchronous=FULL` by default: a committed append survives a
power loss, not only a process crash. One writer thread owns the write
connection and practises *group commit*: every append queued while a
transaction is being written rides in the next one, so concurrent actors
share one fsync instead of paying one each. Readers use their own
connection and never block the writer. The writer checks each append's
expected sequence number against its own record of the streams' highest
numbers: the most recently written `cached_streams` of them, the others
read from the file (one indexed query) when next written, so its memory
does not grow with the number of streams ever written (one per saga).

A journal has one writer: opening takes an exclusive lock on `<path>.lock`
(flock, held until `close()`), so a second engine on the same file, in
another process or this one, is refused with `JournalInUse` instead of
interleaving its writes. The journal, its SQLite companions (`-wal`, `-shm`)
and its lock file are private to their owner (0600), whatever the umask and
whatever mode an existing file had; directories it creates are 0700.

Stored data cannot change silently: every event and snapshot row carries a
checksum of what it stores (see `row_checksum`), written with the row and
verified whenever the row is read. A stored text that is not valid UTF-8
(which this library never writes) is reported the same way, naming its row,
instead of failing the whole read (see `read_tolerating_not_utf8`). The file
records its schema version (`PRAGMA user_version`, `SCHEMA_VERSION`); a
journal from a newer version is refused, and one from before checksums
(version 0) is migrated on open.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from saga_actors.persistence.journal import (
    MAX_SEQUENCE_NR,
    AppendCallback,
    ConcurrencyError,
    JournalCorrupted,
    JournalInUse,
    PersistentEvent,
    SelectedSnapshot,
)
from saga_actors.persistence.serialization import EventCodec, SerializationError
from saga_actors.persistence.writer import QueuedWrite, WriteQueue

__all__ = [
    "DEFAULT_CACHED_STREAMS",
    "SCHEMA_VERSION",
    "NotAJournal",
    "NotUTF8",
    "SQLiteJournal",
    "read_tolerating_not_utf8",
    "row_checksum",
    "text_or_not_utf8",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    persistence_id TEXT PRIMARY KEY,
    highest_sequence_nr INTEGER NOT NULL,
    deleted_to INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    persistence_id TEXT NOT NULL,
    sequence_nr INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    checksum INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (persistence_id, sequence_nr)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    persistence_id TEXT NOT NULL,
    sequence_nr INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    checksum INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (persistence_id, sequence_nr)
) WITHOUT ROWID;
"""

# The schema this library writes, recorded in the file as `PRAGMA user_version`.
# 0: the first schema, without checksums (user_version never set); migrated on open.
# 1: a `checksum` column on events and snapshots.
SCHEMA_VERSION = 1

# The columns of each table, by schema version: anything else is refused.
_PAYLOAD_COLUMNS = ("persistence_id", "sequence_nr", "timestamp", "type", "version", "data")
COLUMNS: dict[int, dict[str, tuple[str, ...]]] = {
    0: {
        "streams": ("persistence_id", "highest_sequence_nr", "deleted_to"),
        "events": _PAYLOAD_COLUMNS,
        "snapshots": _PAYLOAD_COLUMNS,
    },
    1: {
        "streams": ("persistence_id", "highest_sequence_nr", "deleted_to"),
        "events": (*_PAYLOAD_COLUMNS, "checksum"),
        "snapshots": (*_PAYLOAD_COLUMNS, "checksum"),
    },
}

# From version 0 to 1: the column as SCHEMA declares it, then every row's checksum.
_MIGRATION_TO_1 = (
    "ALTER TABLE events ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE snapshots ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0",
    # The text columns as bytes: one that is not valid UTF-8 reaches the function (which stores no
    # checksum for its row) instead of failing the whole migration.
    "UPDATE events SET checksum = journal_row_checksum(CAST(persistence_id AS BLOB), sequence_nr, "
    "CAST(type AS BLOB), version, CAST(data AS BLOB))",
    "UPDATE snapshots SET checksum = journal_row_checksum(CAST(persistence_id AS BLOB), sequence_nr, "
    "CAST(type AS BLOB), version, CAST(data AS BLOB))",
    "PRAGMA user_version = 1",
)

_INSERT_EVENTS = (
    "INSERT INTO events (persistence_id, sequence_nr, timestamp, type, version, data, checksum) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SNAPSHOT = (
    "INSERT OR REPLACE INTO snapshots "
    "(persistence_id, sequence_nr, timestamp, type, version, data, checksum) VALUES (?, ?, ?, ?, ?, ?, ?)"
)

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

# Files beside the journal that SQLite creates and reopens: they hold its data too.
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
LOCK_SUFFIX = ".lock"
CREATING_SUFFIX = ".creating"  # a new journal is built here, then renamed into place

PRIVATE_FILE = 0o600
PRIVATE_DIRECTORY = 0o700

# Streams whose highest sequence number the writer keeps in memory (a few MiB at most).
DEFAULT_CACHED_STREAMS = 65_536


class NotAJournal(JournalCorrupted):
    """The journal's path holds a file that is not a journal: empty, or not a SQLite database.

    Raised by `SQLiteJournal.open()` (and so by its constructor); the file is
    left as it was. `path` names it; `persistence_id` is "" and `sequence_nr`
    0, as the whole file is affected, not one stream. Only a missing file is
    created as a new journal: an existing empty one is a journal that lost its
    contents (truncated), and starting afresh on it would lose every order.
    """

    def __init__(self, path: str, problem: str) -> None:
        Exception.__init__(self, f"journal {path} is not a journal: {problem}")
        self.path = path
        self.problem = problem
        self.persistence_id = ""
        self.sequence_nr = 0

    def __reduce__(self) -> tuple[type[NotAJournal], tuple[str, str]]:
        return type(self), (self.path, self.problem)


def row_checksum(persistence_id: str, sequence_nr: int, type_name: str, version: int, data: str) -> int:
    """The checksum stored with an event or snapshot row: the first 64 bits of SHA-256, as a signed int.

    Over the row's place and payload, framed so no two rows share an input:
    `f"{len(persistence_id)}:{persistence_id}:{sequence_nr}:{len(type_name)}:{type_name}:{version}:{data}"`
    in UTF-8; the first 8 bytes of the digest, big-endian, signed (SQLite's
    INTEGER range). The place is included so that a row copied or moved to
    another stream or sequence number is caught as well as a changed one; the
    timestamp is left out (it is not part of any state).

    Why SHA-256 cut to 64 bits rather than CRC32: CRC32 reliably catches a
    burst of flipped bits, but any other change (two digits edited, a tool
    rewriting a row) slips through once in 2**32, which a journal of millions
    of rows can meet; 64 bits of a cryptographic hash make an undetected
    change of any kind practically impossible, at under a microsecond per row
    (computed in Python while encoding: no extra query). Stored as an
    INTEGER, not hex text: 8 bytes a row, and no runs of digits in the file
    that a search for sensitive numbers (a CVV) would trip over. It is a
    checksum against damage and mistakes, not a signature: anyone who can
    write the file can also recompute it. Raises nothing for str/int arguments.
    """
    framed = (
        f"{len(persistence_id)}:{persistence_id}:{sequence_nr}:{len(type_name)}:{type_name}:{version}:{data}"
    )
    digest = hashlib.sha256(framed.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class NotUTF8(str):
    """A stored text value that is not valid UTF-8, read so that it can be reported, naming its row.

    Made by `text_or_not_utf8`. Its text is the stored bytes decoded with the
    `errors` handler given there; `raw` holds the bytes, `offset` the place of
    the first invalid byte in them. This library never writes such a value:
    Python's sqlite3 binds only valid UTF-8 (a lone surrogate raises
    UnicodeEncodeError), so one found in the file was changed after it was written.
    """

    raw: bytes
    offset: int

    def problem(self) -> str:
        """What is wrong with it, e.g. "not valid UTF-8 (byte 0xff at offset 39)"."""
        return f"not valid UTF-8 ({self.where()})"

    def where(self) -> str:
        """Its first invalid byte and its offset, e.g. "byte 0xff at offset 39"."""
        return f"byte 0x{self.raw[self.offset]:02x} at offset {self.offset}"

    def shown(self) -> str:
        """Its text printable: the invalid bytes as backslash escapes (\\xff)."""
        return self.raw.decode("utf-8", "backslashreplace")


def text_or_not_utf8(raw: bytes, errors: str = "surrogateescape") -> str:
    """A stored text value: decoded as UTF-8, or a `NotUTF8` if it is not valid UTF-8.

    A connection's `text_factory` in `read_tolerating_not_utf8`. With
    "surrogateescape" (what the journal reads with) each invalid byte becomes
    a lone surrogate, which no stored checksum was computed over (no stored
    text can hold one), so such a row never matches its checksum and is
    reported, never used; with "backslashreplace" (the inspector's) it is
    shown as `\\xff`. Raises LookupError for an unknown `errors`.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        value = NotUTF8(raw.decode("utf-8", errors))
        value.raw, value.offset = raw, error.start
        return value


def read_tolerating_not_utf8(
    db: sqlite3.Connection, read: Callable[[], _T], errors: str = "surrogateescape"
) -> _T:
    """`read()`, a read on `db`; if sqlite3 refuses its result because a stored text is not valid UTF-8,
    `read()` again with each text value decoded by `text_or_not_utf8`.

    sqlite3 refuses a whole result if one text value in it is not valid
    UTF-8 ("Could not decode to UTF-8 column 'data' with text ...", an
    OperationalError naming no row). The second read returns such a value as
    a `NotUTF8`, for the caller to report, naming its row. It costs a Python
    call per text value, so it is made only then: the usual read pays nothing.
    `read` must have no effect but reading (it may run twice). Raises what
    `read` raises otherwise; `db` decodes text as before when it returns.
    """
    try:
        return read()
    except sqlite3.OperationalError as error:
        if "UTF-8" not in str(error):
            raise
        db.text_factory = functools.partial(text_or_not_utf8, errors=errors)
        try:
            return read()
        finally:
            db.text_factory = str


def _stored_row_checksum(
    persistence_id: bytes, sequence_nr: int, type_name: bytes, version: int, data: bytes
) -> int:
    """`row_checksum` of a row as stored, its text columns as bytes (the migration's); 0, no
    checksum, for a row whose text is not valid UTF-8: it is reported as such when read."""
    try:
        return row_checksum(
            persistence_id.decode("utf-8"),
            sequence_nr,
            type_name.decode("utf-8"),
            version,
            data.decode("utf-8"),
        )
    except UnicodeDecodeError:
        return 0


class _Operation(QueuedWrite):
    """A unit of work for the writer thread (see `QueuedWrite`).

    An append carries its rows (`append`), checked against the writer's
    record of each stream's highest sequence number; anything else carries
    a function to run inside the transaction.
    """

    __slots__ = ("append", "run")

    def __init__(
        self,
        run: Callable[[sqlite3.Connection], Any] | None = None,
        append: tuple[str, int, list[tuple[Any, ...]]] | None = None,
        callback: AppendCallback | None = None,
    ) -> None:
        super().__init__(callback)
        self.run = run
        self.append = append


class SQLiteJournal:
    """Journal and snapshot store in one SQLite file, owner-only (0600), one writer at a time.

    `group_commit=False` writes one transaction per operation (for
    comparison); `synchronous` is SQLite's setting (FULL by default).
    `cached_streams` (>= 1) bounds the writer's record of the streams'
    highest sequence numbers: the least recently written are dropped from
    it and read from the file again when next written.

    The constructor opens the journal (see `open()` for what it raises).
    Threads: `open()` and `close()` run in the caller's thread; writes run in
    the journal's own writer thread ("journal-writer"), which also calls
    `append_async` callbacks; reads run in the caller's thread on a shared
    reader connection. Reads and writes may come from any thread; `open()`
    and `close()` must not race each other.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        codec: EventCodec,
        *,
        synchronous: str = "FULL",
        group_commit: bool = True,
        max_batch: int = 1000,
        cached_streams: int = DEFAULT_CACHED_STREAMS,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        if cached_streams < 1:
            raise ValueError(f"cached_streams must be at least 1, got {cached_streams}")
        self.cached_streams = cached_streams
        self.path = os.fspath(path)
        self.codec = codec
        self._synchronous = synchronous.upper()
        self._max_batch = max_batch if group_commit else 1
        self._reader_lock = threading.Lock()
        self._closed = True
        self.transactions = 0  # for measurements: operations / transactions = batch size
        self.operations = 0
        self.open()

    def open(self) -> None:
        """Lock the journal, open it (creating it if missing) and start the writer; idempotent.

        Runs in the caller's thread. Takes the journal's writer lock first: an
        exclusive, non-blocking `flock` on `<path>.lock`, held until `close()`
        and released by the kernel if the process dies; the lock file records
        this process's id. Makes the journal, its `-wal`/`-shm` and the lock
        file owner-only (0600) and any directory it creates 0700.

        A new journal is created at `SCHEMA_VERSION`. A journal of schema
        version 0 (made before checksums) is migrated in one transaction: the
        `checksum` columns are added, every stored row's checksum is computed
        from what it holds now (the migration cannot know what was written
        before; rows that do not decode still fail when read, and a row whose
        text is not valid UTF-8 gets none), and the version is set to 1. An
        interrupted migration leaves the file at version 0.

        Raises `JournalInUse` if another journal object, in this process or
        another, has the file open; `NotAJournal` (a `JournalCorrupted`) if the
        file exists but is empty, not a SQLite database, a database without the
        journal's tables or columns, or a journal of a newer schema version than
        `SCHEMA_VERSION` (the message names both versions; such a file is left
        exactly as it was); `OSError` or `sqlite3.Error` if the file cannot be
        created, opened or migrated. A failed open leaves nothing running,
        nothing open and nothing locked.
        """
        if not self._closed:
            return
        lock_fd = _acquire_lock(self.path)
        file_fd: int | None = None
        writer: sqlite3.Connection | None = None
        reader: sqlite3.Connection | None = None
        try:
            _prepare_file(self.path)
            # The lock file is found by path; the journal itself may be reached by
            # other paths too (a symlink, a hard link, a lock file deleted by
            # hand): lock the file's inode as well.
            file_fd = _lock_file_itself(self.path, lock_fd)
            version = _check_schema(self.path)
            _make_journal_private(self.path)  # before SQLite makes -wal/-shm with the file's mode
            writer = self._connect(self._synchronous)
            if version < SCHEMA_VERSION:
                _migrate(writer, self.path, version)
            reader = self._connect(self._synchronous)
            self._writer, self._reader, self._lock_fd, self._file_fd = writer, reader, lock_fd, file_fd
            # The writer's record of recently written streams, least recently written first.
            self._highest: OrderedDict[str, int] = OrderedDict()
            self._writes = WriteQueue(self.path, self._max_batch, self._write)
            self._closed = False
        except BaseException as error:
            self._closed = True
            try:
                for db in (reader, writer):
                    if db is not None:
                        db.close()
            finally:
                if file_fd is not None:
                    os.close(
                        file_fd
                    )  # after SQLite's connections: closing it drops this process's fcntl locks
                _release_lock(lock_fd)
            if isinstance(error, sqlite3.DatabaseError) and error.sqlite_errorcode in (
                sqlite3.SQLITE_NOTADB,
                sqlite3.SQLITE_CORRUPT,
            ):
                problem = (
                    "not a SQLite database" if error.sqlite_errorcode == sqlite3.SQLITE_NOTADB else "damaged"
                )
                raise NotAJournal(self.path, f"{problem} ({error})") from error
            raise

    # --- journal ---

    def append(self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int) -> int:
        """Store `events` atomically after `expected_sequence_nr`, with checksums; return the new highest.

        Raises SerializationError (before anything is written) if an event
        cannot be encoded, ConcurrencyError if `expected_sequence_nr` is not
        the stream's highest, RuntimeError if the journal is closed, and
        `sqlite3.Error` or OSError if the transaction fails.
        """
        highest: int = self._submit(
            _Operation(append=self._rows(persistence_id, events, expected_sequence_nr))
        )
        return highest

    def append_async(
        self,
        persistence_id: str,
        events: Sequence[Any],
        expected_sequence_nr: int,
        on_done: AppendCallback,
    ) -> None:
        operation = _Operation(
            append=self._rows(persistence_id, events, expected_sequence_nr), callback=on_done
        )
        self._enqueue(operation)

    def _rows(
        self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int
    ) -> tuple[str, int, list[tuple[Any, ...]]]:
        # Encode in the caller's thread: a value that cannot be stored fails here, at its source.
        now = time.time()
        encode = self.codec.encode
        rows = []
        for sequence_nr, event in enumerate(events, start=expected_sequence_nr + 1):
            type_name, version, data = encode(event)
            checksum = row_checksum(persistence_id, sequence_nr, type_name, version, data)
            rows.append((persistence_id, sequence_nr, now, type_name, version, data, checksum))
        return persistence_id, expected_sequence_nr, rows

    def replay(
        self,
        persistence_id: str,
        from_sequence_nr: int = 1,
        to_sequence_nr: int = MAX_SEQUENCE_NR,
        max_count: int = MAX_SEQUENCE_NR,
    ) -> list[PersistentEvent]:
        """Events with from <= sequence_nr <= to, oldest first, at most `max_count`.

        Every row read is checked: raises `JournalCorrupted` naming the
        persistence id and sequence number if an event is missing (a gap, or
        fewer rows than the stream's highest promises), if its checksum does
        not match what it stores (changed after it was written), if its stored
        text is not valid UTF-8, or if it does not decode (unknown type,
        unreadable JSON, a malformed value, fields that do not fit).
        """
        with self._reader_lock:
            self._reader.execute("BEGIN")
            try:
                stream = self._reader.execute(
                    "SELECT highest_sequence_nr, deleted_to FROM streams WHERE persistence_id = ?",
                    (persistence_id,),
                ).fetchone()
                if stream is None:
                    return []
                highest, deleted_to = stream
                start = max(from_sequence_nr, deleted_to + 1, 1)
                end = min(to_sequence_nr, highest)
                if start > end or max_count <= 0:
                    return []
                limit = min(max_count, end - start + 1)
                rows = self._fetch(
                    "SELECT sequence_nr, timestamp, type, version, data, checksum FROM events "
                    "WHERE persistence_id = ? AND sequence_nr BETWEEN ? AND ? "
                    "ORDER BY sequence_nr LIMIT ?",
                    (persistence_id, start, end, limit),
                )
            finally:
                self._reader.execute("COMMIT")
        result = []
        for expected, (sequence_nr, timestamp, type_name, version, data, checksum) in enumerate(
            rows, start=start
        ):
            if sequence_nr != expected:
                raise JournalCorrupted(
                    persistence_id, expected, f"event missing (next stored is #{sequence_nr})"
                )
            result.append(
                PersistentEvent(
                    persistence_id,
                    sequence_nr,
                    self._decode(persistence_id, sequence_nr, type_name, version, data, checksum),
                    timestamp,
                )
            )
        if len(result) < limit:
            raise JournalCorrupted(persistence_id, start + len(result), "event missing")
        return result

    def highest_sequence_nr(self, persistence_id: str) -> int:
        row = self._read_one(
            "SELECT highest_sequence_nr FROM streams WHERE persistence_id = ?", (persistence_id,)
        )
        return row[0] if row else 0

    def persistence_ids(self, prefix: str = "") -> list[str]:
        """The streams' ids that start with `prefix`, sorted.

        Raises `JournalCorrupted` (sequence number 0: the whole stream) if a
        stream's stored id is not valid UTF-8: that stream cannot be replayed.
        """
        with self._reader_lock:
            rows = self._fetch(
                "SELECT persistence_id FROM streams WHERE substr(persistence_id, 1, ?) = ? "
                "ORDER BY persistence_id",
                (len(prefix), prefix),
            )
        return _stream_ids(rows)

    def open_persistence_ids(self, prefix: str, final_types: tuple[type, ...]) -> list[str]:
        names = [self.codec.name_of(cls) for cls in final_types]
        marks = ", ".join("?" * len(names)) or "NULL"
        with self._reader_lock:
            rows = self._fetch(
                "SELECT s.persistence_id FROM streams s LEFT JOIN events e "
                "ON e.persistence_id = s.persistence_id AND e.sequence_nr = s.highest_sequence_nr "
                f"WHERE substr(s.persistence_id, 1, ?) = ? AND (e.type IS NULL OR e.type NOT IN ({marks})) "
                "ORDER BY s.persistence_id",
                (len(prefix), prefix, *names),
            )
        return _stream_ids(rows)

    def delete_to(self, persistence_id: str, to_sequence_nr: int) -> None:
        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM events WHERE persistence_id = ? AND sequence_nr <= ?",
                (persistence_id, to_sequence_nr),
            )
            db.execute(
                "UPDATE streams SET deleted_to = max(deleted_to, min(?, highest_sequence_nr)) "
                "WHERE persistence_id = ?",
                (to_sequence_nr, persistence_id),
            )

        self._submit(_Operation(run))

    def flush(self) -> None:
        self._submit(_Operation(lambda db: None))  # queued behind every earlier write

    # --- snapshots ---

    def save_snapshot(self, persistence_id: str, sequence_nr: int, snapshot: Any) -> None:
        """Store `snapshot` (with its checksum) as the state after event `sequence_nr`, replacing one there.

        Raises SerializationError if it cannot be encoded, RuntimeError if the
        journal is closed, `sqlite3.Error` or OSError if the write fails.
        """
        type_name, version, data = self.codec.encode(snapshot)
        checksum = row_checksum(persistence_id, sequence_nr, type_name, version, data)
        row = (persistence_id, sequence_nr, time.time(), type_name, version, data, checksum)

        def run(db: sqlite3.Connection) -> None:
            db.execute(_INSERT_SNAPSHOT, row)

        self._submit(_Operation(run))

    def delete_snapshots(self, persistence_id: str, max_sequence_nr: int) -> None:
        """Delete the snapshots of `persistence_id` at or below `max_sequence_nr`, in the writer's thread.

        Raises RuntimeError if the journal is closed, `sqlite3.Error` or OSError if the write fails.
        """

        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM snapshots WHERE persistence_id = ? AND sequence_nr <= ?",
                (persistence_id, max_sequence_nr),
            )

        self._submit(_Operation(run))

    def load_snapshot(
        self, persistence_id: str, max_sequence_nr: int = MAX_SEQUENCE_NR
    ) -> SelectedSnapshot | None:
        """The most recent snapshot at or below `max_sequence_nr`, if any.

        Raises `JournalCorrupted` naming the persistence id and the snapshot's
        sequence number if its checksum does not match, its stored text is not
        valid UTF-8, or it does not decode; an older snapshot is not silently
        used instead.
        """
        row = self._read_one(
            "SELECT sequence_nr, timestamp, type, version, data, checksum FROM snapshots "
            "WHERE persistence_id = ? AND sequence_nr <= ? ORDER BY sequence_nr DESC LIMIT 1",
            (persistence_id, max_sequence_nr),
        )
        if row is None:
            return None
        sequence_nr, timestamp, type_name, version, data, checksum = row
        snapshot = self._decode(persistence_id, sequence_nr, type_name, version, data, checksum, "snapshot")
        return SelectedSnapshot(persistence_id, sequence_nr, snapshot, timestamp)

    # --- lifecycle ---

    def close(self) -> None:
        """Finish the queued writes, stop the writer, close the file and release its lock; idempotent.

        Runs in the caller's thread and waits for the writer thread to finish.
        Writes submitted after it starts raise RuntimeError ("closed"). The
        lock is released even if closing a connection fails.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._writes.stop()
            self._writer.close()
            with self._reader_lock:
                self._reader.close()
        finally:
            try:
                os.close(self._file_fd)
            finally:
                _release_lock(self._lock_fd)

    # --- internals ---

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        return db

    def _read_one(self, sql: str, parameters: tuple[Any, ...]) -> Any:
        with self._reader_lock:
            rows = self._fetch(sql, parameters)
        return rows[0] if rows else None

    def _fetch(self, sql: str, parameters: tuple[Any, ...]) -> list[Any]:
        """The rows of a read on the reader connection (the caller holds `_reader_lock`); a stored
        text that is not valid UTF-8 comes back as a `NotUTF8` (see `read_tolerating_not_utf8`)."""
        reader = self._reader
        return read_tolerating_not_utf8(reader, lambda: reader.execute(sql, parameters).fetchall())

    def _decode(
        self,
        persistence_id: str,
        sequence_nr: int,
        type_name: str,
        version: int,
        data: str,
        checksum: object,
        what: str = "event",
    ) -> Any:
        """The stored value, once its checksum and decoding both pass; else JournalCorrupted.

        A row whose stored text is not valid UTF-8 is reported as such (it
        never matches its checksum: see `text_or_not_utf8`, so it is looked for
        only then, and the usual row pays nothing); one that does not decode
        is reported as such, first (adding "and its checksum does not match" if
        it was also changed after it was written); one that decodes but does
        not match its checksum is reported as changed.
        """
        expected = row_checksum(persistence_id, sequence_nr, type_name, version, data)
        changed = checksum != expected
        if changed:
            for column, value in (
                ("type", type_name),
                ("version", version),
                ("data", data),
                ("checksum", checksum),
            ):
                if isinstance(value, NotUTF8):
                    raise JournalCorrupted(
                        persistence_id,
                        sequence_nr,
                        f"{what}: stored {column} is {value.problem()}, changed after it was written",
                    )
        row = (persistence_id, sequence_nr, type_name, version, data)
        return decode_checked(self.codec, *row, checksum=checksum, expected=expected, what=what)

    def _enqueue(self, operation: _Operation) -> None:
        """Queue `operation` for the writer, or raise RuntimeError if the journal is closed."""
        if self._closed:
            raise RuntimeError(f"journal {self.path} is closed")
        self._writes.put(operation)

    def _submit(self, operation: _Operation) -> Any:
        if self._closed:
            raise RuntimeError(f"journal {self.path} is closed")
        return self._writes.submit(operation)

    def _write(self, batch: list[_Operation]) -> None:
        """One transaction, one fsync, for every operation in the batch."""
        db = self._writer
        highest: dict[str, int] = {}  # this batch's view of each stream it touches
        rows: list[tuple[Any, ...]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            for operation in batch:
                if operation.append is not None:
                    self._check_append(db, operation, highest, rows)
                    continue
                self._insert(db, rows, highest)  # keep the order of appends and other work
                db.execute("SAVEPOINT operation")
                try:
                    operation.result = operation.run(db)  # type: ignore[misc]
                except Exception as error:
                    db.execute("ROLLBACK TO operation")
                    operation.error = error
                db.execute("RELEASE operation")
            self._insert(db, rows, highest)
            db.execute("COMMIT")
            self._remember(highest)
            self.transactions += 1
            self.operations += len(batch)
        except Exception as error:  # the transaction failed: nothing in it is durable
            logger.exception("journal %s: write failed", self.path)
            for operation in batch:
                if operation.error is None:
                    operation.error = error
            if db.in_transaction:
                db.execute("ROLLBACK")

    def _check_append(
        self,
        db: sqlite3.Connection,
        operation: _Operation,
        highest: dict[str, int],
        rows: list[tuple[Any, ...]],
    ) -> None:
        """Optimistic concurrency, checked in memory: the writer is the only writer."""
        assert operation.append is not None
        persistence_id, expected, new_rows = operation.append
        current = highest.get(persistence_id)
        if current is None:
            current = self._highest.get(persistence_id)
            if current is None:  # never written, or dropped from the record: the file knows
                current = _highest(db, persistence_id)
        if current != expected:
            operation.error = ConcurrencyError(
                f"{persistence_id}: expected sequence number {expected}, journal is at {current}"
            )
            return
        highest[persistence_id] = operation.result = expected + len(new_rows)
        rows.extend(new_rows)

    def _remember(self, highest: dict[str, int]) -> None:
        """Record the streams a committed transaction wrote; forget the least recently written
        beyond `cached_streams` (writer thread only)."""
        record = self._highest
        for persistence_id, sequence_nr in highest.items():
            record[persistence_id] = sequence_nr
            record.move_to_end(persistence_id)
        while len(record) > self.cached_streams:
            record.popitem(last=False)

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: list[tuple[Any, ...]], highest: dict[str, int]) -> None:
        if not rows:
            return
        db.executemany(_INSERT_EVENTS, rows)
        db.executemany(
            "INSERT INTO streams (persistence_id, highest_sequence_nr) VALUES (?, ?) "
            "ON CONFLICT (persistence_id) DO UPDATE SET highest_sequence_nr = excluded.highest_sequence_nr",
            list(highest.items()),
        )
        rows.clear()


def _stream_ids(rows: list[Any]) -> list[str]:
    """The persistence ids of `rows` (one column); JournalCorrupted for one that is not valid UTF-8."""
    ids: list[str] = [row[0] for row in rows]
    for persistence_id in ids:
        if isinstance(persistence_id, NotUTF8):
            raise JournalCorrupted(
                persistence_id.shown(),
                0,
                f"stream: stored persistence id is {persistence_id.problem()}, changed after it was written",
            )
    return ids


def _highest(db: sqlite3.Connection, persistence_id: str) -> int:
    row = db.execute(
        "SELECT highest_sequence_nr FROM streams WHERE persistence_id = ?", (persistence_id,)
    ).fetchone()
    return row[0] if row else 0


def _acquire_lock(path: str) -> int:
    """Take the journal's writer lock; return the lock file's descriptor, which holds it.

    The lock file is `<path>.lock`, owner-only; the holder writes its process
    id into it. flock belongs to the open file description, so a second open
    in this same process conflicts too, and a killed holder's lock goes with
    its process. Raises JournalInUse if it is held.
    """
    real = os.path.realpath(path)  # a symlink to a journal shares the journal's lock file
    _make_private_directories(os.path.dirname(real))
    fd = os.open(real + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        _make_private(real + LOCK_SUFFIX, os.fstat(fd), fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalInUse(path, _recorded_pid(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_file_itself(path: str, lock_fd: int) -> int:
    """flock the journal file's own inode (not its path); return the descriptor that holds it.

    SQLite's own locks are fcntl locks, which flock does not touch on Linux.
    Raises JournalInUse if another journal object holds the file under another path.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JournalInUse(path, None) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def decode_checked(
    codec: EventCodec,
    persistence_id: str,
    sequence_nr: int,
    type_name: str,
    version: int,
    data: str,
    *,
    checksum: object,
    expected: int,
    what: str,
) -> Any:
    """A stored row's value, once its checksum (`expected`: the row's `row_checksum`) and its
    decoding both pass (what every journal that keeps `row_checksum`s does on a read); else
    `JournalCorrupted` naming the row - a row that does not decode is reported as such, first
    (adding "and its checksum does not match" if it was also changed after it was written); one
    that decodes but does not match is reported as changed."""
    changed = checksum != expected
    try:
        value = codec.decode(type_name, version, data)
    except SerializationError as error:
        problem = f"{what}: {error}"
        if changed:
            problem += f" (and its checksum does not match: {_checksum_problem(checksum, expected)})"
        raise JournalCorrupted(persistence_id, sequence_nr, problem) from error
    if changed:
        raise JournalCorrupted(
            persistence_id,
            sequence_nr,
            f"{what}: checksum does not match, the stored {type_name} changed after it was written "
            f"({_checksum_problem(checksum, expected)})",
        )
    return value


def _checksum_problem(stored: object, expected: int) -> str:
    if stored == 0 or stored == "":
        return f"no checksum stored, its data gives {_hex(expected)}"
    shown = _hex(stored) if isinstance(stored, int) else repr(stored)
    return f"stored {shown}, its data gives {_hex(expected)}"


def _hex(checksum: int) -> str:
    return f"{checksum & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def _check_schema(path: str) -> int:
    """Refuse a SQLite database that is not a journal this library can use; return its schema version.

    Refused with NotAJournal: another program's database, tables dropped or
    columns missing (damaged), or a schema this library does not know: a
    `user_version` above SCHEMA_VERSION, or columns beyond the ones its
    version has (a newer library's). Reads it read-only: a database that is
    refused is left exactly as it was.
    """
    db = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro", uri=True)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        columns = {
            table: tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
            for table in ("streams", "events", "snapshots")
            if table in tables
        }
    finally:
        db.close()
    missing = {"streams", "events", "snapshots"} - tables
    if missing:
        others = sorted(tables - {"streams", "events", "snapshots"})
        raise NotAJournal(
            path,
            f"a SQLite database without the journal's tables ({', '.join(sorted(missing))} missing"
            + (f"; it holds {', '.join(others[:5])}" if others else "")
            + "): not a journal, or a damaged one",
        )
    if version not in COLUMNS:
        raise NotAJournal(
            path,
            f"its schema version is {version} (PRAGMA user_version), and this library reads versions "
            f"0 to {SCHEMA_VERSION} and writes version {SCHEMA_VERSION}"
            + (
                ": made by a newer saga-actors? Open it with that version" if version > SCHEMA_VERSION else ""
            ),
        )
    for table, expected in COLUMNS[version].items():
        found = columns[table]
        unknown = [c for c in found if c not in expected]
        lacking = [c for c in expected if c not in found]
        if unknown:
            raise NotAJournal(
                path,
                f"its {table} table has columns this library does not know ({', '.join(unknown)}) "
                f"for schema version {version}; this library writes version {SCHEMA_VERSION}: "
                "made by a newer saga-actors?",
            )
        if lacking:
            raise NotAJournal(
                path,
                f"its {table} table lacks columns of schema version {version} "
                f"({', '.join(lacking)}): damaged, or not a journal",
            )
    return int(version)


def _migrate(db: sqlite3.Connection, path: str, version: int) -> None:
    """Bring a journal of schema `version` to SCHEMA_VERSION, in one transaction.

    0 -> 1: add the checksum columns and fill them from the rows as stored (see `_stored_row_checksum`).
    Raises `sqlite3.Error` if it fails; the file is then left as it was.
    """
    assert version == 0, version  # _check_schema admits no other
    db.create_function("journal_row_checksum", 5, _stored_row_checksum, deterministic=True)
    started = time.monotonic()
    try:
        db.execute("BEGIN IMMEDIATE")
        for statement in _MIGRATION_TO_1:
            db.execute(statement)
        events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        snapshots = db.execute("SELECT count(*) FROM snapshots").fetchone()[0]
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    logger.info(
        "journal %s: schema version 0 -> %d: checksums added to %d events and %d snapshots in %.2f s",
        path,
        SCHEMA_VERSION,
        events,
        snapshots,
        time.monotonic() - started,
    )


def _release_lock(fd: int) -> None:
    """Forget the recorded pid and release the lock (closing the descriptor releases it)."""
    try:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _recorded_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError):  # not written yet, or not by us
        return None


def _make_private_directories(directory: str) -> None:
    """Create `directory` and any missing parents as 0700, whatever the umask.

    Directories that exist already are not ours to change.
    """
    missing: list[str] = []
    while not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for created in reversed(missing):
        try:
            os.mkdir(created, PRIVATE_DIRECTORY)
        except FileExistsError:
            continue  # made meanwhile by someone else
        os.chmod(created, PRIVATE_DIRECTORY)  # the umask may have taken bits off


def _prepare_file(path: str) -> None:
    """Make an existing journal owner-only, or create a missing one; refuse an empty file.

    Runs with the writer lock held, before SQLite opens the file: SQLite
    creates `-wal` and `-shm` with the journal file's mode, so fixing that
    mode first keeps new companions private, and existing ones are fixed here.
    """
    if os.path.islink(path) and not os.path.exists(path):
        raise NotAJournal(
            path, f"a symbolic link to {os.readlink(path)!r}, which does not exist (a volume not mounted?)"
        )
    try:
        info = os.stat(path)
    except FileNotFoundError:
        _create_journal_file(path)
        return
    if stat.S_ISDIR(info.st_mode):
        raise NotAJournal(path, "it is a directory")
    if stat.S_ISREG(info.st_mode) and info.st_size == 0:
        raise NotAJournal(
            path,
            "it is an empty file (0 bytes), perhaps truncated; restore it from a backup, "
            "or delete it to start a new, empty journal",
        )


def _make_journal_private(path: str) -> None:
    """Make the journal and its existing companions owner-only (once it is known to be a journal:
    a file that is refused is left as it was)."""
    for name in (path, *(path + suffix for suffix in COMPANION_SUFFIXES)):
        try:
            info = os.stat(name)
        except FileNotFoundError:
            continue
        _make_private(name, info)


def _make_private(path: str, info: os.stat_result, fd: int | None = None) -> None:
    """Make `path` (open as `fd`, if given) 0600 if it is a regular file of ours with another mode."""
    if (
        stat.S_ISREG(info.st_mode)
        and info.st_uid == os.geteuid()
        and stat.S_IMODE(info.st_mode) != PRIVATE_FILE
    ):
        logger.info("journal file %s: mode %o -> %o", path, stat.S_IMODE(info.st_mode), PRIVATE_FILE)
        if fd is None:
            os.chmod(path, PRIVATE_FILE)
        else:
            os.fchmod(fd, PRIVATE_FILE)


def _create_journal_file(path: str) -> None:
    """Create a new, empty journal (owner-only) at `path`, atomically.

    It is built beside the path and renamed into place, so the path never
    holds a half-made file: a crash here cannot leave the empty file that
    the next start would refuse.
    """
    creating = path + CREATING_SUFFIX
    for leftover in (creating, *(creating + suffix for suffix in COMPANION_SUFFIXES)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)  # of a creation that crashed; we hold the lock
    fd = os.open(creating, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # the umask may have taken bits off
    finally:
        os.close(fd)
    try:
        db = sqlite3.connect(creating, isolation_level=None)
        try:
            db.executescript(f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        finally:
            db.close()
        fd = os.open(creating, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(creating, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(creating)
        raise
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)  # the rename is durable
    finally:
        os.close(fd)
