"""Inspect a SQLite journal: where a person debugging a stuck order starts.

    python -m saga_actors.persistence JOURNAL            # summary: streams, counts, unfinished sagas
    python -m saga_actors.persistence JOURNAL ID         # every event about ID, in time order

The tool reads the stored JSON directly, so it needs none of the
application's classes and never changes the file. It verifies each row's
checksum (see `row_checksum`): the summary counts and names rows that changed
after they were written (exit status 1 if there are any), the history marks
them. A journal of a newer schema version than this library's is refused
(exit status 2), as the library refuses it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sqlite3
import sys
import urllib.parse
from typing import Any

from saga_actors.persistence.sqlite import SCHEMA_VERSION, row_checksum

# The saga engine's conventions (sagas/): streams named "saga:<name>:<id>",
# finished once their last event is one of these.
SAGA_PREFIX = "saga:"
SAGA_FINAL_TYPES = ("SagaCompleted", "SagaAborted")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m saga_actors.persistence", description=__doc__.splitlines()[0]
    )
    parser.add_argument("journal", help="path of the SQLite journal file")
    parser.add_argument("id", nargs="?", help="an order id (or any id): show every event about it")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.journal):
        print(f"error: no journal file at {args.journal}", file=sys.stderr)
        return 2
    db = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(args.journal))}?mode=ro", uri=True)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            print(
                f"error: {args.journal} has schema version {version}; this library reads versions "
                f"0 to {SCHEMA_VERSION} (made by a newer saga-actors?)",
                file=sys.stderr,
            )
            return 2
        checked = version >= 1  # version 0 was written before checksums
        return history(db, args.id, checked) if args.id else summary(db, args.journal, checked)
    except sqlite3.DatabaseError as error:
        print(f"error: {args.journal} is not a readable journal: {error}", file=sys.stderr)
        return 2
    finally:
        db.close()


def summary(db: sqlite3.Connection, path: str, checked: bool = True) -> int:
    streams = db.execute(
        "SELECT s.persistence_id, s.highest_sequence_nr, s.deleted_to, "
        "  (SELECT count(*) FROM events e WHERE e.persistence_id = s.persistence_id), "
        "  (SELECT type FROM events e WHERE e.persistence_id = s.persistence_id "
        "     ORDER BY sequence_nr DESC LIMIT 1) "
        "FROM streams s ORDER BY s.persistence_id"
    ).fetchall()
    snapshots = dict(
        db.execute("SELECT persistence_id, max(sequence_nr) FROM snapshots GROUP BY persistence_id")
    )
    total = sum(s[3] for s in streams)
    print(f"journal {path}: {len(streams)} streams, {total} events, {os.path.getsize(path)} bytes")
    groups: dict[str, list[Any]] = {}
    for stream in streams:
        groups.setdefault(_group(stream[0]), []).append(stream)
    print()
    print(f"  {'stream':<28} {'events':>8} {'highest':>8} {'snapshot':>9}  last event")
    for group, members in sorted(groups.items()):
        if len(members) == 1 and members[0][0] == group:
            pid, highest, _, count, last = members[0]
            snap = snapshots.get(pid)
            print(f"  {pid:<28} {count:>8} {highest:>8} {snap if snap else '-':>9}  {last or '-'}")
        else:
            count = sum(m[3] for m in members)
            print(f"  {group + '*':<28} {count:>8} {'':>8} {'':>9}  ({len(members)} streams)")
    unfinished = [s for s in streams if s[0].startswith(SAGA_PREFIX) and s[4] not in SAGA_FINAL_TYPES]
    print()
    if unfinished:
        print(f"unfinished sagas ({len(unfinished)}): resumed at the next start")
        for pid, highest, _, _, last in unfinished[:50]:
            print(f"  {pid}  last event #{highest} {last}")
        if len(unfinished) > 50:
            print(f"  ... and {len(unfinished) - 50} more")
    else:
        print("unfinished sagas: none")
    print()
    if not checked:
        print("checksums: none stored (schema version 0); added when the journal is next opened to write")
        return 0
    changed = [
        (what, pid, sequence_nr)
        for what in ("events", "snapshots")
        for pid, sequence_nr, type_name, version, data, checksum in db.execute(
            f"SELECT persistence_id, sequence_nr, type, version, data, checksum FROM {what} "
            "ORDER BY persistence_id, sequence_nr"
        )
        if checksum != row_checksum(pid, sequence_nr, type_name, version, data)
    ]
    if not changed:
        print("checksums: every event and snapshot matches")
        return 0
    print(f"checksums: {len(changed)} rows do NOT match: changed after they were written")
    for what, pid, sequence_nr in changed[:50]:
        print(f"  {what[:-1]} {pid} #{sequence_nr}")
    if len(changed) > 50:
        print(f"  ... and {len(changed) - 50} more")
    return 1


def history(db: sqlite3.Connection, wanted: str, checked: bool = True) -> int:
    checksum = "checksum" if checked else "NULL"
    candidates = db.execute(
        f"SELECT persistence_id, sequence_nr, timestamp, type, version, data, {checksum} FROM events "
        "WHERE persistence_id = ? OR persistence_id LIKE ? ESCAPE '\\' OR instr(data, ?) > 0",
        (wanted, "%:" + _escape_like(wanted), json.dumps(wanted)),
    ).fetchall()
    rows = [
        row
        for row in candidates
        if row[0] == wanted or row[0].endswith(":" + wanted) or _mentions(_loads(row[5]), wanted)
    ]
    if not rows:
        print(f"no event mentions {wanted!r}")
        return 1
    rows.sort(key=lambda r: (r[2], r[0], r[1]))
    print(f"{len(rows)} events about {wanted!r}:")
    for pid, sequence_nr, timestamp, type_name, version, data, stored in rows:
        when = datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="milliseconds")
        value = _loads(data)
        shown = _plain(value) if value is not _UNREADABLE else f"{data[:200]!r} (unreadable JSON)"
        mark = (
            "  [CHECKSUM DOES NOT MATCH: changed after it was written]"
            if checked and stored != row_checksum(pid, sequence_nr, type_name, version, data)
            else ""
        )
        print(f"  {when}  {pid} #{sequence_nr:<5} {type_name} (v{version})  {shown}{mark}")
    return 0


_UNREADABLE = object()


def _loads(data: str) -> Any:
    """The stored JSON, or _UNREADABLE: a damaged row is shown, not a traceback."""
    try:
        return json.loads(data)
    except ValueError:
        return _UNREADABLE


def _group(persistence_id: str) -> str:
    parts = persistence_id.split(":")
    return ":".join(parts[:-1]) + ":" if len(parts) > 1 else persistence_id


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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
    sys.exit(main())
