"""Inspect a journal (a SQLite file or a PostgreSQL URL): where a person debugging a stuck order starts.

    python -m saga_actors.persistence JOURNAL            # summary: streams, counts, unfinished sagas
    python -m saga_actors.persistence JOURNAL ID         # every event about ID, and its sagas' state
    python -m saga_actors.persistence --json JOURNAL [ID]  # the same as one JSON document on stdout

JOURNAL is a file's path, or a PostgreSQL URL (`postgresql://user@host/db`):
that journal is read in one read-only snapshot, without any lock, into an
in-memory copy that is then read as a file is (see `inspect_postgres`); the
URL is shown without its password, and the process holding the journal's
advisory lock (a writer, else a node) is named as a file's writer is.

The history of an id merges the events of several streams (`orders`,
`inventory`, `payment`, `saga:order:<id>`, ...). Within one stream events are
always shown in sequence-number order, the order they happened in; the
streams are interleaved by timestamp, which is only as good as the clocks
that wrote it (a clock stepped back reorders streams, never one stream's
events). Times are shown in UTC (`...Z`). What the journal holds is shown with
every character that is not printable escaped (`\\x1b`, `\\n`): a stored id or
reason cannot drive the terminal or fake a line of the output.

For a saga that has not finished, the inspector says what it waits for: its
phase (forward, committed, compensating), the steps of its current stage or
the compensations still pending, what happens to it at the next start, and
how long ago its last event was written. While a process has the journal
open for writing (it holds the lock `<journal>.lock`), its unfinished sagas
are in flight there, and the inspector names that process. Attempt numbers,
and which steps of a stage have already answered, are not journaled, so
they cannot be shown.

The tool reads the stored JSON directly and never changes the file; it uses
the application's saga definitions (those it knows: `saga:order:*`) only to
name the steps of a stage. It verifies each row's checksum (see
`row_checksum`): the summary counts and names rows that changed after they
were written (exit status 1 if there are any), the history marks them. A
stored text that is not valid UTF-8 (which the library never writes) is shown
with its invalid bytes escaped (`\\xff`) and counted and marked the same way. A
journal of a newer schema version than this library's is refused (exit
status 2), as the library refuses it, and so is what is not a journal: a
directory, an empty file, a file that is not a SQLite database, another
program's database (one line on stderr).

Output cut short by the reader (`... | head`) ends the tool quietly with
exit status 141 (128 + SIGPIPE, what a tool killed by SIGPIPE reports): the
output is incomplete, so no verdict, such as the checksums' status 0 or 1,
is claimed.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import heapq
import json
import os
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from saga_actors._cli import EMPTY, error, flushed, head_problem, output_closed, printable
from saga_actors.persistence.sqlite import (
    LOCK_SUFFIX,
    SCHEMA_VERSION,
    NotAJournal,
    NotUTF8,
    _check_schema,
    read_tolerating_not_utf8,
    row_checksum,
)

if TYPE_CHECKING:
    from saga_actors.sagas.definition import SagaDefinition

# The saga engine's conventions (sagas/): streams named "saga:<name>:<id>",
# finished once their last event is one of these.
SAGA_PREFIX = "saga:"
SAGA_FINAL_TYPES = ("SagaCompleted", "SagaAborted")

_T = TypeVar("_T")

# The clock "how long ago" is measured against (tests replace it).
_now: Callable[[], float] = time.time


PROG = "python -m saga_actors.persistence"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "journal", help="path of the SQLite journal file, or a PostgreSQL URL (postgresql://...)"
    )
    parser.add_argument("id", nargs="?", help="an order id (or any id): show every event about it")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout instead of text"
    )
    args = parser.parse_args(argv)
    problem = id_problem(args.id) if args.id is not None else None
    if problem is None and args.journal.startswith(POSTGRES_SCHEMES):
        return inspect_postgres(args.journal, args.id, as_json=args.json)
    problem = problem or not_a_journal(args.journal)
    if problem is not None:
        return error(PROG, problem)
    db = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(args.journal))}?mode=ro", uri=True)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            return error(
                PROG,
                f"{args.journal} has schema version {version}; this library reads versions "
                f"0 to {SCHEMA_VERSION} (made by a newer saga-actors?)",
            )
        _check_schema(args.journal)  # the journal's tables and columns, as the library checks them
        checked = version >= 1  # version 0 was written before checksums
        writer = journal_writer(args.journal)
        if args.id:
            return history(db, args.id, checked, as_json=args.json, writer=writer)
        return summary(db, args.journal, checked, as_json=args.json, writer=writer)
    except NotAJournal as refused:
        return error(PROG, str(refused))
    except sqlite3.DatabaseError as failed:
        return error(PROG, f"{args.journal} is not a readable journal: {failed}")
    finally:
        db.close()


def inspect_postgres(url: str, wanted: str | None, *, as_json: bool) -> int:
    """`main` on a PostgreSQL journal: read in one read-only snapshot (as the library's
    "reader" mode: no lock, no write, no schema made) into an in-memory SQLite copy of the
    journal's tables, which the summary and the history read as they read a file.

    The copy holds what the database stores: each row's data as jsonb's text, its checksum as
    the database computed it over that text (`row_checksum`), so a row changed by hand is
    counted and marked as in a file. The URL is shown without its password. Exit status 2,
    one line on stderr, if the database cannot be reached or holds no journal (or a newer one).
    """
    try:
        from saga_actors.persistence import postgres
    except ImportError as missing:  # pragma: no cover - the module itself imports without the extra
        return error(PROG, str(missing))
    shown = postgres.safe_url(url)
    try:
        postgres._require_driver()
        copy, version, size, writer = postgres.copy_for_inspection(url)
    except ImportError as missing:
        return error(PROG, str(missing))
    except (NotAJournal, postgres.PostgresUnavailable) as refused:
        return error(PROG, str(refused))
    try:
        if wanted:
            return history(copy, wanted, True, as_json=as_json, writer=writer)
        return summary(copy, shown, version >= 1, as_json=as_json, writer=writer, size=size)
    finally:
        copy.close()


def id_problem(wanted: str) -> str | None:
    """Why the id argument cannot be looked up, or None: an empty one (leave it out for the
    summary), or one that is not text (bytes the system could not decode)."""
    if not wanted:
        return "the id is empty: give an order id (or any id), or leave it out for the summary"
    try:
        wanted.encode("utf-8")
    except UnicodeEncodeError:
        return f"the id {_shown_id(wanted)} is not valid UTF-8 text, and ids in a journal are"
    return None


def not_a_journal(path: str) -> str | None:
    """Why `path` is plainly not a journal file, said before SQLite opens it; None if it may be."""
    if os.path.isdir(path):
        return f"{path} is a directory, not a journal file"
    if not os.path.lexists(path):
        return f"no journal file at {path}"
    if not os.path.exists(path):
        return f"{path} is a symbolic link to {os.readlink(path)!r}, which does not exist"
    if not os.path.isfile(path):
        return f"{path} is not a regular file (a journal is a SQLite file)"
    problem = head_problem(path)
    if problem == EMPTY:
        return f"{path} is {EMPTY}, not a journal: perhaps truncated; restore it from a backup"
    return None if problem is None else f"{path}: {problem}"


def journal_writer(path: str) -> dict[str, int | None] | None:
    """`{"pid": <id>}` of the process that has the journal open for writing now (the one that
    drives its unfinished sagas; `None` if it has not recorded its id yet), or None if none has.

    The library's writer holds an exclusive flock on `<realpath>.lock` (see
    `persistence/sqlite.py`) and records its pid in it. This asks for a shared
    lock without waiting and, if it is granted, gives it back at once: it is
    held for no longer than two system calls take (a writer starting in that
    instant is refused with JournalInUse, as it would be while any reader held
    it). None too if the lock file cannot be read (another user's journal).
    """
    try:
        fd = os.open(os.path.realpath(path) + LOCK_SUFFIX, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file: never opened for writing, or not ours to read
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            recorded = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return {"pid": int(recorded) if recorded.isdigit() else None}
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _writer_name(writer: dict[str, int | None]) -> str:
    return f"process {writer['pid']}" if writer["pid"] else "another process (its id is not recorded yet)"


def run_command(argv: list[str] | None = None) -> int:
    """`main` as a command: a reader that stops reading (`| head`) ends it quietly with
    EXIT_BROKEN_PIPE (141)."""
    try:
        return flushed(main(argv))  # the last buffered output may meet the closed pipe
    except BrokenPipeError:
        return output_closed()


# --- the summary -----------------------------------------------------------------


def summary(
    db: sqlite3.Connection,
    path: str,
    checked: bool = True,
    *,
    as_json: bool = False,
    writer: dict[str, int | None] | None = None,
    size: int | None = None,
) -> int:
    """The summary of the journal in `db`; `path` names it, `size` is its size in bytes (the
    file's at `path` if not given)."""
    streams = _rows(
        db,
        "SELECT s.persistence_id, s.highest_sequence_nr, s.deleted_to, "
        "  (SELECT count(*) FROM events e WHERE e.persistence_id = s.persistence_id), "
        "  (SELECT type FROM events e WHERE e.persistence_id = s.persistence_id "
        "     ORDER BY sequence_nr DESC LIMIT 1) "
        "FROM streams s ORDER BY s.persistence_id",
    )
    snapshots = dict(
        _rows(db, "SELECT persistence_id, max(sequence_nr) FROM snapshots GROUP BY persistence_id")
    )
    total = sum(s[3] for s in streams)
    size = os.path.getsize(path) if size is None else size
    unfinished = [s[0] for s in streams if s[0].startswith(SAGA_PREFIX) and s[4] not in SAGA_FINAL_TYPES]
    changed = _changed_rows(db) if checked else []
    status = 1 if changed else 0
    now = _now()

    if as_json:
        _print_json(
            {
                "journal": path,
                "size_bytes": size,
                "schema_version": db.execute("PRAGMA user_version").fetchone()[0],
                "in_use_by": writer,  # {"pid": ...} while a process has it open for writing
                "now": _utc(now),
                "streams": [
                    {
                        "persistence_id": pid,
                        "events": count,
                        "highest_sequence_nr": highest,
                        "deleted_to": deleted_to,
                        "snapshot_sequence_nr": snapshots.get(pid),
                        "last_event": last,
                    }
                    for pid, highest, deleted_to, count, last in streams
                ],
                "events": total,
                "unfinished_sagas": [saga_status(db, pid, now) for pid in unfinished],
                "checksums": {
                    "stored": checked,
                    "all_match": not changed if checked else None,
                    "mismatched": [
                        {"table": what, "persistence_id": pid, "sequence_nr": sequence_nr}
                        | ({} if problem == _MISMATCH else {"not_valid_utf8": problem})
                        for what, pid, sequence_nr, problem in changed
                    ],
                },
            }
        )
        return status

    _say(f"journal {path}: {len(streams)} streams, {total} events, {size} bytes")
    groups: dict[str, list[Any]] = {}
    for stream in streams:
        groups.setdefault(_group(stream[0]), []).append(stream)
    _say()
    _say(f"  {'stream':<28} {'events':>8} {'highest':>8} {'snapshot':>9}  last event")
    for group, members in sorted(groups.items()):
        if len(members) == 1 and members[0][0] == group:
            pid, highest, _, count, last = members[0]
            snap = snapshots.get(pid)
            _say(f"  {pid:<28} {count:>8} {highest:>8} {snap if snap else '-':>9}  {last or '-'}")
        else:
            count = sum(m[3] for m in members)
            _say(f"  {group + '*':<28} {count:>8} {'':>8} {'':>9}  ({len(members)} streams)")
    _say()
    if unfinished:
        if writer is not None:
            driven = f"in flight in {_writer_name(writer)}, which has the journal open"
        else:
            driven = "resumed at the next start"
        _say(f"unfinished sagas ({len(unfinished)}): {driven}; now is {_utc(now)}")
        for pid in unfinished[:50]:
            for line in _saga_lines(saga_status(db, pid, now), writer):
                _say("  " + line)
        if len(unfinished) > 50:
            _say(f"  ... and {len(unfinished) - 50} more (--json lists them all)")
    else:
        _say("unfinished sagas: none")
    _say()
    if not checked:
        _say("checksums: none stored (schema version 0); added when the journal is next opened to write")
        return 0
    if not changed:
        _say("checksums: every event and snapshot matches")
        return 0
    _say(f"checksums: {len(changed)} rows do NOT match: changed after they were written")
    for what, pid, sequence_nr, problem in changed[:50]:
        _say(f"  {what[:-1]} {pid} #{sequence_nr}" + ("" if problem == _MISMATCH else f": {problem}"))
    if len(changed) > 50:
        _say(f"  ... and {len(changed) - 50} more")
    return status


_MISMATCH = "checksum does not match"


def _changed_rows(db: sqlite3.Connection) -> list[tuple[str, str, int, str]]:
    """(table, persistence id, sequence number, problem) of each row that changed after it was written.

    A stream whose stored id is not valid UTF-8 is listed as ("streams", its
    id escaped, its highest sequence number, the problem).
    """
    return _tolerant(db, lambda: _find_changed_rows(db))  # rows read one by one, not all held


def _find_changed_rows(db: sqlite3.Connection) -> list[tuple[str, str, int, str]]:
    changed: list[tuple[str, str, int, str]] = [
        ("streams", pid, highest, _problem("persistence id", pid))
        for pid, highest in db.execute(
            "SELECT persistence_id, highest_sequence_nr FROM streams ORDER BY persistence_id"
        )
        if isinstance(pid, NotUTF8)
    ]
    for what in ("events", "snapshots"):
        for pid, sequence_nr, type_name, version, data, checksum in db.execute(
            f"SELECT persistence_id, sequence_nr, type, version, data, checksum FROM {what} "
            "ORDER BY persistence_id, sequence_nr"
        ):
            if (
                checksum != row_checksum(pid, sequence_nr, type_name, version, data)
                or isinstance(pid, NotUTF8)
                or isinstance(type_name, NotUTF8)
                or isinstance(data, NotUTF8)
            ):
                changed.append(
                    (
                        what,
                        pid,
                        sequence_nr,
                        _row_problem(pid, sequence_nr, type_name, version, data, checksum) or _MISMATCH,
                    )
                )
    return changed


def _row_problem(
    pid: str, sequence_nr: int, type_name: str, version: int, data: str, checksum: object
) -> str | None:
    """Why an event or snapshot row cannot be trusted, or None: a stored text that is not valid
    UTF-8 (its text here shows the bytes escaped, and might even match the checksum), or its checksum."""
    not_utf8 = _not_utf8(persistence_id=pid, type=type_name, data=data, checksum=checksum)
    if not_utf8 is not None:
        return _problem(*not_utf8)
    if checksum != row_checksum(pid, sequence_nr, type_name, version, data):
        return _MISMATCH
    return None


def _not_utf8(**columns: object) -> tuple[str, NotUTF8] | None:
    """The first of `columns` (name=value) whose stored text is not valid UTF-8, or None."""
    for column, value in columns.items():
        if isinstance(value, NotUTF8):
            return column.replace("_", " "), value
    return None


def _problem(column: str, value: NotUTF8) -> str:
    """E.g. "stored data is not valid UTF-8 (byte 0xff at offset 39)"."""
    return f"stored {column} is {value.problem()}"


# --- the history of one id -----------------------------------------------------------


def history(
    db: sqlite3.Connection,
    wanted: str,
    checked: bool = True,
    *,
    as_json: bool = False,
    writer: dict[str, int | None] | None = None,
) -> int:
    checksum = "checksum" if checked else "NULL"
    candidates = _rows(
        db,
        f"SELECT persistence_id, sequence_nr, timestamp, type, version, data, {checksum} FROM events "
        # substr, not LIKE: a pattern has a length limit (50,000 bytes), an id has none; the id as
        # JSON both ways: the codec escapes what is not ASCII, PostgreSQL's jsonb does not
        "WHERE persistence_id = ? OR substr(persistence_id, -?) = ? "
        "OR instr(data, ?) > 0 OR instr(data, ?) > 0",
        (wanted, len(wanted) + 1, ":" + wanted, json.dumps(wanted), json.dumps(wanted, ensure_ascii=False)),
    )
    # A row whose JSON cannot be read (damaged) but holds the id's JSON string is shown, not hidden.
    rows = _in_order(
        row
        for row in candidates
        if row[0] == wanted
        or row[0].endswith(":" + wanted)
        or (value := _loads(row[5])) is _UNREADABLE
        or _mentions(value, wanted)
    )
    now = _now()
    sagas = [
        saga_status(db, pid, now) for pid in sorted({r[0] for r in rows if r[0].startswith(SAGA_PREFIX)})
    ]

    if as_json:
        events = []
        for pid, sequence_nr, timestamp, type_name, version, data, stored in rows:
            value = _loads(data)
            problem = _row_problem(pid, sequence_nr, type_name, version, data, stored) if checked else None
            not_utf8 = _not_utf8(persistence_id=pid, type=type_name, data=data)
            event: dict[str, Any] = {
                "persistence_id": pid,
                "sequence_nr": sequence_nr,
                "time": _utc(timestamp),
                "timestamp": timestamp,
                "type": type_name,
                "version": version,
                "data": None if value is _UNREADABLE else value,
                "checksum_matches": problem is None if checked else None,
            }
            if value is _UNREADABLE:
                event["unreadable_data"] = data
            if not_utf8 is not None:
                event["not_valid_utf8"] = _problem(*not_utf8)
            events.append(event)
        _print_json({"id": wanted, "now": _utc(now), "in_use_by": writer, "events": events, "sagas": sagas})
        return 0 if rows else 1

    if not rows:
        _say(f"no event mentions {_shown_id(wanted)}")
        return 1
    _say(f"{len(rows)} events about {_shown_id(wanted)} (times in UTC; each stream in sequence order):")
    for pid, sequence_nr, timestamp, type_name, version, data, stored in rows:
        value = _loads(data)
        shown = _plain(value) if value is not _UNREADABLE else f"{data[:200]!r} (unreadable JSON)"
        not_utf8 = _not_utf8(persistence_id=pid, type=type_name, data=data)
        if not_utf8 is not None:
            column, text = not_utf8
            mark = (
                f"  [STORED {column.upper()} IS NOT VALID UTF-8 ({text.where()}): "
                "changed after it was written]"
            )
        elif checked and _row_problem(pid, sequence_nr, type_name, version, data, stored):
            mark = "  [CHECKSUM DOES NOT MATCH: changed after it was written]"
        else:
            mark = ""
        _say(f"  {_utc(timestamp)}  {pid} #{sequence_nr:<5} {type_name} (v{version})  {shown}{mark}")
    for saga in sagas:
        _say()
        if writer is not None and saga["on_restart"]:
            _say(f"in flight in {_writer_name(writer)}, which has the journal open:")
        for line in _saga_lines(saga, writer):
            _say(line)
    return 0


def _in_order(rows: Any) -> list[Any]:
    """Each stream's rows by sequence number; the streams merged by timestamp.

    A k-way merge compares only the streams' next rows, so a clock that went
    backwards can interleave streams oddly but never reorders one stream.
    """
    streams: dict[str, list[Any]] = {}
    for row in rows:
        streams.setdefault(row[0], []).append(row)
    ordered = [sorted(events, key=lambda r: r[1]) for _, events in sorted(streams.items())]
    return list(heapq.merge(*ordered, key=lambda r: r[2]))


# --- what an unfinished saga waits for ------------------------------------------------


def saga_status(db: sqlite3.Connection, persistence_id: str, now: float) -> dict[str, Any]:
    """Fold a saga stream's stored events (the JSON, no classes) into what it is doing.

    The result is plain JSON-able data: `phase` is "forward" (no decision
    yet), "committed", "compensating", "completed", "aborted", "new" (no
    event says it began) or "empty" (no events left); `waiting_for` the steps
    ({"step", "kind": "do" | "undo"}) it still sends, or None when the saga's
    definition is not known to this tool.
    """
    # A stored id that is not valid UTF-8 (from the streams table) is looked up by its bytes.
    stored_id = persistence_id.raw if isinstance(persistence_id, NotUTF8) else persistence_id
    rows = _rows(
        db,
        "SELECT sequence_nr, timestamp, type, data FROM events WHERE persistence_id = CAST(? AS TEXT) "
        "ORDER BY sequence_nr",
        (stored_id,),
    )
    parts = persistence_id.split(":", 2)
    name, saga_id = (parts[1], parts[2]) if len(parts) == 3 else ("", persistence_id[len(SAGA_PREFIX) :])
    definition = _definition(name)
    notes: list[str] = []
    phase = "new" if rows else "empty"
    stage: int | None = None
    committed = False
    reason: str | None = None
    failed_step: str | None = None
    compensate: list[str] = []
    if isinstance(persistence_id, NotUTF8):
        notes.append(f"its stored persistence id is {persistence_id.problem()}")
    for sequence_nr, _, type_name, data in rows:
        value = _loads(data)
        if isinstance(data, NotUTF8):
            notes.append(
                f"#{sequence_nr} {type_name}: stored data is {data.problem()}, its fields are not known"
            )
        elif value is _UNREADABLE:
            notes.append(f"#{sequence_nr} {type_name}: unreadable JSON, its fields are not known")
        fields = value if isinstance(value, dict) else {}
        if type_name == "SagaStarted":
            phase = "forward"
        elif type_name == "StageStarted":
            phase = "forward" if phase == "new" else phase
            stage = fields.get("stage") if isinstance(fields.get("stage"), int) else stage
        elif type_name == "CommitDecided":
            phase, committed = ("forward" if phase == "new" else phase), True
        elif type_name == "AbortDecided":
            phase = "compensating"
            reason = _text(fields.get("reason"))
            failed_step = _text(fields.get("failed_step"))
            listed = fields.get("compensate")
            compensate = [str(s) for s in listed] if isinstance(listed, list) else []
        elif type_name == "SagaCompleted":
            phase = "completed"
        elif type_name == "SagaAborted":
            phase, reason = "aborted", _text(fields.get("reason")) or reason
        else:
            notes.append(f"#{sequence_nr}: unknown saga event type {type_name!r}, ignored")
    if phase == "forward" and committed:
        phase = "committed"
    if rows and rows[0][0] > 1:
        notes.append(f"events before #{rows[0][0]} are deleted: the state is folded from what is left")

    waiting: list[dict[str, str]] | None = []
    stages = len(definition.stages) if definition is not None else None
    on_restart: str | None = None
    if phase in ("forward", "committed"):
        if definition is None:
            waiting = None
        elif stage is not None and 0 <= stage < len(definition.stages):
            waiting = [{"step": s.name, "kind": "do"} for s in definition.stages[stage]]
        else:
            notes.append(f"stage {stage} is not a stage of saga {name!r}")
        if phase == "committed":
            on_restart = "every step of this stage is sent again, until it succeeds (roll forward)"
        else:
            on_restart = (
                "rolled back: no commit decision is journaled (presumed abort); "
                "every step of the stages begun is compensated"
            )
    elif phase == "compensating":
        waiting = [{"step": s, "kind": "undo"} for s in compensate]
        if definition is None:
            notes.append(f"saga {name!r} is not known to this tool: steps it runs on abort are not shown")
        else:
            waiting += [{"step": s.name, "kind": "do"} for s in definition.on_abort]
        on_restart = "the compensations are sent again, until they succeed"
    if phase in ("forward", "committed", "compensating"):
        if definition is None:
            notes.append(f"saga {name!r} is not known to this tool: the names of its steps are not shown")
        notes.append("attempt numbers, and which of these steps have answered, are not journaled")

    last = rows[-1] if rows else None
    return {
        "persistence_id": persistence_id,
        "saga": name,
        "saga_id": saga_id,
        "phase": phase,
        "finished": phase in ("completed", "aborted"),
        "stage": stage,
        "stages": stages,
        "reason": reason,
        "failed_step": failed_step,
        "waiting_for": waiting,
        "on_restart": on_restart,
        "last_event": None
        if last is None
        else {
            "sequence_nr": last[0],
            "type": last[2],
            "time": _utc(last[1]),
            "timestamp": last[1],
            "seconds_ago": round(now - last[1], 3),
        },
        "notes": notes,
    }


def _saga_lines(status: dict[str, Any], writer: dict[str, int | None] | None = None) -> list[str]:
    """A saga status (from `saga_status`) for people: a head line, then indented details;
    `writer` is the process that has the journal open (see `journal_writer`), if one has."""
    last = status["last_event"]
    if last is None:
        head = f"{status['persistence_id']}  no events left"
    else:
        head = (
            f"{status['persistence_id']}  last event #{last['sequence_nr']} {last['type']} "
            f"at {last['time']} ({_ago(last['seconds_ago'])})"
        )
    phase, stage, stages = status["phase"], status["stage"], status["stages"]
    reason = f" ({status['reason']})" if status["reason"] else ""
    where = ""
    if phase in ("forward", "committed") and stage is not None:
        where = f", stage {stage + 1} of {stages}" if stages else f", stage {stage + 1}"
    described = {
        "forward": "forward, no commit decision yet",
        "committed": "committed (the commit decision is journaled: driven to the end)",
        "compensating": f"compensating{reason}"
        + (f", failed step {status['failed_step']}" if status["failed_step"] else ""),
        "completed": "completed",
        "aborted": f"rolled back{reason}",
        "new": "no event says it began",
        "empty": "its stream has no events left",
    }.get(phase, phase)
    details = [described + where]
    waiting = status["waiting_for"]
    if waiting:
        names = ", ".join(w["step"] + (" (compensation)" if w["kind"] == "undo" else "") for w in waiting)
        details[0] += f": waiting for {names}"
    elif waiting is not None and not status["finished"] and phase in ("forward", "committed", "compensating"):
        details[0] += ": nothing pending is journaled"
    if status["on_restart"] and writer is not None:
        details.append(f"if {_writer_name(writer)} stops, at the next start: {status['on_restart']}")
    elif status["on_restart"]:
        details.append(f"at the next start: {status['on_restart']}")
    details += status["notes"]
    return [head] + ["    " + line for line in details]


_DEFINITIONS = ("order",)


def _definition(name: str) -> SagaDefinition | None:
    """The saga definitions this tool knows, to name a stage's steps; None for others."""
    if name not in _DEFINITIONS:
        return None
    try:
        from saga_actors.actors.order_saga import ORDER_SAGA
    except Exception:  # the application's modules are a help here, not a requirement
        return None
    return ORDER_SAGA


def _ago(seconds: float) -> str:
    if seconds < 0:
        return f"{_duration(-seconds)} in the future: a clock was stepped back?"
    return f"{_duration(seconds)} ago"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"


def _utc(timestamp: float) -> str:
    """A journal timestamp (unix seconds) in UTC, e.g. 2026-11-29T10:45:44.508Z."""
    when = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _say(line: str = "") -> None:
    """Print one line of the text output, with every character that is not printable escaped
    (`printable`): what a journal holds cannot move the cursor, colour the terminal or
    start a line of its own that looks like the tool's."""
    print(printable(line))


def _shown_id(wanted: str) -> str:
    """The id argument quoted for a message; a long one cut short, with its length."""
    if len(wanted) <= 200:
        return repr(wanted)
    return f"{wanted[:100]!r}... ({len(wanted):,} characters)"


def _print_json(document: dict[str, Any]) -> None:
    """One JSON document. Without `ensure_ascii` json escapes only the characters below
    U+0020: every other one that is not printable (DEL, the C1 controls, bidirectional
    overrides, ...) is escaped here too (`\\u202e`), so the document stays valid JSON and
    its text stays what it says."""
    text = json.dumps(document, indent=2, ensure_ascii=False)
    print(
        "\n".join(
            line
            if line.isprintable()
            else "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in line)
            for line in text.split("\n")
        )
    )


# --- reading the stored JSON -------------------------------------------------------------

_UNREADABLE = object()


def _rows(db: sqlite3.Connection, sql: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
    """The rows of a query; a stored text that is not valid UTF-8 (damaged) comes back as a
    `NotUTF8` showing its invalid bytes as `\\xff`, instead of failing the whole read."""
    return _tolerant(db, lambda: db.execute(sql, parameters).fetchall())


def _tolerant(db: sqlite3.Connection, read: Callable[[], _T]) -> _T:
    return read_tolerating_not_utf8(db, read, errors="backslashreplace")


def _loads(data: str) -> Any:
    """The stored JSON, or _UNREADABLE: a damaged row is shown, not a traceback."""
    try:
        return json.loads(data)
    except ValueError:
        return _UNREADABLE


def _group(persistence_id: str) -> str:
    parts = persistence_id.split(":")
    return ":".join(parts[:-1]) + ":" if len(parts) > 1 else persistence_id


def _mentions(value: Any, wanted: str) -> bool:
    if isinstance(value, str):
        return value == wanted
    if isinstance(value, list):
        return any(_mentions(v, wanted) for v in value)
    if isinstance(value, dict):
        return any(_mentions(v, wanted) for v in value.values())
    return False


def _plain(value: Any) -> str:
    """The stored JSON without the type tags, for reading."""

    def strip(v: Any) -> Any:
        if isinstance(v, list):
            return [strip(x) for x in v]
        if isinstance(v, dict):
            if "$decimal" in v:
                return v["$decimal"]
            if "$set" in v:
                return [strip(x) for x in v["$set"]]
            if "$dict" in v:
                return {str(strip(k)): strip(x) for k, x in v["$dict"]}
            return {k: strip(x) for k, x in v.items() if k != "$type"}
        return v

    return json.dumps(strip(value), ensure_ascii=False)


if __name__ == "__main__":
    sys.exit(run_command())
