"""The SQLite journal and snapshot store: durable, embedded, one file.

WAL mode with `synchronous=FULL` by default: a committed append survives a
power loss, not only a process crash. One writer thread owns the write
connection and practises *group commit*: every append queued while a
transaction is being written rides in the next one, so concurrent actors
share one fsync instead of paying one each. Readers use their own
connection and never block the writer.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from saga_actors.persistence.journal import (
    MAX_SEQUENCE_NR,
    AppendCallback,
    ConcurrencyError,
    JournalCorrupted,
    PersistentEvent,
    SelectedSnapshot,
)
from saga_actors.persistence.serialization import EventCodec, SerializationError

__all__ = ["SQLiteJournal"]

logger = logging.getLogger(__name__)

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
    PRIMARY KEY (persistence_id, sequence_nr)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    persistence_id TEXT NOT NULL,
    sequence_nr INTEGER NOT NULL,
    timestamp REAL NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (persistence_id, sequence_nr)
) WITHOUT ROWID;
"""

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class _Operation:
    """A unit of work for the writer thread; the caller waits until `done` is released.

    An append carries its rows (`append`), checked against the writer's
    record of each stream's highest sequence number; anything else carries
    a function to run inside the transaction.
    """

    __slots__ = ("append", "callback", "done", "error", "result", "run")

    def __init__(
        self,
        run: Callable[[sqlite3.Connection], Any] | None = None,
        append: tuple[str, int, list[tuple[Any, ...]]] | None = None,
        callback: AppendCallback | None = None,
    ) -> None:
        self.run = run
        self.append = append
        self.callback = callback  # set: nobody waits, the writer calls it instead
        self.done = threading.Lock()
        if callback is None:
            self.done.acquire()  # released by the writer: cheaper than an Event
        self.result: Any = None
        self.error: BaseException | None = None


_STOP = object()


class SQLiteJournal:
    """Journal and snapshot store in one SQLite file (created mode 0600).

    `group_commit=False` writes one transaction per operation (for
    comparison); `synchronous` is SQLite's setting (FULL by default).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        codec: EventCodec,
        *,
        synchronous: str = "FULL",
        group_commit: bool = True,
        max_batch: int = 1000,
    ) -> None:
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
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
        """Open the file (creating it, private to its owner) and start the writer; idempotent."""
        if not self._closed:
            return
        _create_private_file(self.path)
        self._writer = self._connect(self._synchronous)
        self._writer.executescript(SCHEMA)
        self._reader = self._connect(self._synchronous)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._highest: dict[str, int] = {}  # the writer's record, read from the file once per stream
        self._thread = threading.Thread(target=self._write_loop, name="journal-writer", daemon=True)
        self._closed = False
        self._thread.start()

    # --- journal ---

    def append(self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int) -> int:
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
        if self._closed:
            raise RuntimeError(f"journal {self.path} is closed")
        self._queue.put(operation)

    def _rows(
        self, persistence_id: str, events: Sequence[Any], expected_sequence_nr: int
    ) -> tuple[str, int, list[tuple[Any, ...]]]:
        # Encode in the caller's thread: a value that cannot be stored fails here, at its source.
        now = time.time()
        rows = [
            (persistence_id, expected_sequence_nr + i, now, *self.codec.encode(event))
            for i, event in enumerate(events, start=1)
        ]
        return persistence_id, expected_sequence_nr, rows

    def replay(
        self,
        persistence_id: str,
        from_sequence_nr: int = 1,
        to_sequence_nr: int = MAX_SEQUENCE_NR,
        max_count: int = MAX_SEQUENCE_NR,
    ) -> list[PersistentEvent]:
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
                rows = self._reader.execute(
                    "SELECT sequence_nr, timestamp, type, version, data FROM events "
                    "WHERE persistence_id = ? AND sequence_nr BETWEEN ? AND ? "
                    "ORDER BY sequence_nr LIMIT ?",
                    (persistence_id, start, end, limit),
                ).fetchall()
            finally:
                self._reader.execute("COMMIT")
        result = []
        for expected, (sequence_nr, timestamp, type_name, version, data) in enumerate(rows, start=start):
            if sequence_nr != expected:
                raise JournalCorrupted(
                    persistence_id, expected, f"event missing (next stored is #{sequence_nr})"
                )
            result.append(
                PersistentEvent(
                    persistence_id,
                    sequence_nr,
                    self._decode(persistence_id, sequence_nr, type_name, version, data),
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
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT persistence_id FROM streams WHERE substr(persistence_id, 1, ?) = ? "
                "ORDER BY persistence_id",
                (len(prefix), prefix),
            ).fetchall()
        return [r[0] for r in rows]

    def open_persistence_ids(self, prefix: str, final_types: tuple[type, ...]) -> list[str]:
        names = [self.codec.name_of(cls) for cls in final_types]
        marks = ", ".join("?" * len(names)) or "NULL"
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT s.persistence_id FROM streams s LEFT JOIN events e "
                "ON e.persistence_id = s.persistence_id AND e.sequence_nr = s.highest_sequence_nr "
                f"WHERE substr(s.persistence_id, 1, ?) = ? AND (e.type IS NULL OR e.type NOT IN ({marks})) "
                "ORDER BY s.persistence_id",
                (len(prefix), prefix, *names),
            ).fetchall()
        return [r[0] for r in rows]

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
        row = (persistence_id, sequence_nr, time.time(), *self.codec.encode(snapshot))

        def run(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?)", row)

        self._submit(_Operation(run))

    def load_snapshot(
        self, persistence_id: str, max_sequence_nr: int = MAX_SEQUENCE_NR
    ) -> SelectedSnapshot | None:
        row = self._read_one(
            "SELECT sequence_nr, timestamp, type, version, data FROM snapshots "
            "WHERE persistence_id = ? AND sequence_nr <= ? ORDER BY sequence_nr DESC LIMIT 1",
            (persistence_id, max_sequence_nr),
        )
        if row is None:
            return None
        sequence_nr, timestamp, type_name, version, data = row
        snapshot = self._decode(persistence_id, sequence_nr, type_name, version, data, "snapshot")
        return SelectedSnapshot(persistence_id, sequence_nr, snapshot, timestamp)

    # --- lifecycle ---

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self._writer.close()
        with self._reader_lock:
            self._reader.close()

    # --- internals ---

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        return db

    def _read_one(self, sql: str, parameters: tuple[Any, ...]) -> Any:
        with self._reader_lock:
            return self._reader.execute(sql, parameters).fetchone()

    def _decode(
        self,
        persistence_id: str,
        sequence_nr: int,
        type_name: str,
        version: int,
        data: str,
        what: str = "event",
    ) -> Any:
        try:
            return self.codec.decode(type_name, version, data)
        except SerializationError as error:
            raise JournalCorrupted(persistence_id, sequence_nr, f"{what}: {error}") from None

    def _submit(self, operation: _Operation) -> Any:
        if self._closed:
            raise RuntimeError(f"journal {self.path} is closed")
        self._queue.put(operation)
        operation.done.acquire()
        if operation.error is not None:
            raise operation.error
        return operation.result

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(op is _STOP for op in batch):
                stopping = True
                batch = [op for op in batch if op is not _STOP]
            if batch:
                self._write(batch)

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
            self._highest.update(highest)
            self.transactions += 1
            self.operations += len(batch)
        except Exception as error:  # the transaction failed: nothing in it is durable
            logger.exception("journal %s: write failed", self.path)
            if db.in_transaction:
                db.execute("ROLLBACK")
            for operation in batch:
                if operation.error is None:
                    operation.error = error
        finally:
            for operation in batch:
                if operation.callback is None:
                    operation.done.release()
                    continue
                try:
                    operation.callback(operation.result, operation.error)
                except Exception:
                    logger.exception("journal %s: append callback failed", self.path)

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
            if current is None:
                current = _highest(db, persistence_id)
        if current != expected:
            operation.error = ConcurrencyError(
                f"{persistence_id}: expected sequence number {expected}, journal is at {current}"
            )
            return
        highest[persistence_id] = operation.result = expected + len(new_rows)
        rows.extend(new_rows)

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: list[tuple[Any, ...]], highest: dict[str, int]) -> None:
        if not rows:
            return
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.executemany(
            "INSERT INTO streams (persistence_id, highest_sequence_nr) VALUES (?, ?) "
            "ON CONFLICT (persistence_id) DO UPDATE SET highest_sequence_nr = excluded.highest_sequence_nr",
            list(highest.items()),
        )
        rows.clear()


def _highest(db: sqlite3.Connection, persistence_id: str) -> int:
    row = db.execute(
        "SELECT highest_sequence_nr FROM streams WHERE persistence_id = ?", (persistence_id,)
    ).fetchone()
    return row[0] if row else 0


def _create_private_file(path: str) -> None:
    """Create the database file readable and writable by its owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
