"""Inspect a SQLite journal: where a person debugging a stuck order starts.

    python -m saga_actors.persistence JOURNAL            # summary: streams, counts, unfinished sagas
    python -m saga_actors.persistence JOURNAL ID         # every event about ID, in time order

The tool reads the stored JSON directly, so it needs none of the
application's classes and never changes the file.
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
        return history(db, args.id) if args.id else summary(db, args.journal)
    except sqlite3.DatabaseError as error:
        print(f"error: {args.journal} is not a readable journal: {error}", file=sys.stderr)
        return 2
    finally:
        db.close()


def summary(db: sqlite3.Connection, path: str) -> int:
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
    return 0


def history(db: sqlite3.Connection, wanted: str) -> int:
    candidates = db.execute(
        "SELECT persistence_id, sequence_nr, timestamp, type, version, data FROM events "
        "WHERE persistence_id = ? OR persistence_id LIKE ? ESCAPE '\\' OR instr(data, ?) > 0",
        (wanted, "%:" + _escape_like(wanted), json.dumps(wanted)),
    ).fetchall()
    rows = [
        row
        for row in candidates
        if row[0] == wanted or row[0].endswith(":" + wanted) or _mentions(json.loads(row[5]), wanted)
    ]
    if not rows:
        print(f"no event mentions {wanted!r}")
        return 1
    rows.sort(key=lambda r: (r[2], r[0], r[1]))
    print(f"{len(rows)} events about {wanted!r}:")
    for pid, sequence_nr, timestamp, type_name, version, data in rows:
        when = datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="milliseconds")
        print(f"  {when}  {pid} #{sequence_nr:<5} {type_name} (v{version})  {_plain(json.loads(data))}")
    return 0


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
