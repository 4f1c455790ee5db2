"""`python -m saga_actors.persistence postgresql://...`: the inspector on a PostgreSQL journal
says what it says about the same journal in a SQLite file. Skipped without a server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from saga_actors import OrderSystem
from saga_actors.actors.codec import order_codec
from saga_actors.actors.order_saga import OrderSagaData
from saga_actors.actors.validation import validate_order
from saga_actors.persistence import PostgresJournal, SQLiteJournal
from saga_actors.persistence.__main__ import main
from saga_actors.sagas.engine import SagaStarted, StageStarted
from tests.conftest import DECLINED, make_request, needs_postgres
from tests.test_postgres_journal import execute

pytestmark = needs_postgres

ROOT = Path(__file__).resolve().parent.parent


def copy_into_postgres(path: Path, url: str) -> None:
    """Every stream of the SQLite journal at `path`, appended to a PostgreSQL journal at `url`."""
    codec = order_codec()
    source = SQLiteJournal(path, codec)
    target = PostgresJournal(url, codec)
    try:
        for pid in source.persistence_ids():
            target.append(pid, [e.event for e in source.replay(pid)], 0)
    finally:
        source.close()
        target.close()


def timeless(text: str) -> str:
    """The output without what differs between two copies: times, ages, sizes, the journal's name."""
    text = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "T", text)
    text = re.sub(r"\([\d.]+ (s|min|h|d)[^)]*\)", "(AGO)", text)
    return "\n".join(line for line in text.splitlines() if not line.startswith("journal "))


def test_summary_and_history_read_as_they_do_on_a_file(tmp_path, postgres_url, capsys):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}) as system:
        system.place_order(make_request("ord-1", [(1, 2)]), timeout=5)
        system.place_order(make_request("ord-2", [(1, 1)], card=DECLINED), timeout=5)
    journal = SQLiteJournal(path, order_codec())
    stuck = validate_order(make_request("stuck"))
    started = SagaStarted("stuck", OrderSagaData.from_order(stuck))
    journal.append("saga:order:stuck", [started, StageStarted(0)], 0)
    journal.close()
    copy_into_postgres(path, postgres_url)
    for arguments in ([], ["ord-2"], ["stuck"]):
        assert main([str(path), *arguments]) == 0
        on_file = capsys.readouterr().out
        assert main([postgres_url, *arguments]) == 0
        on_postgres = capsys.readouterr().out
        if arguments:  # the same events (the copy's times interleave the streams otherwise), sagas
            assert events_shown(on_postgres) == events_shown(on_file) != []
            assert timeless(on_postgres.partition("\n\n")[2]) == timeless(on_file.partition("\n\n")[2])
        else:
            assert timeless(on_postgres) == timeless(on_file)
    summary = main_output([postgres_url], capsys)
    assert summary.startswith(f"journal {postgres_url}: ") and "unfinished sagas (1)" in summary


def events_shown(output: str) -> list[str]:
    """The events a history lists, as "stream #n Type", sorted; their JSON aside (jsonb orders
    an object's keys its own way)."""
    return sorted(f"{stream} {kind}" for stream, kind in re.findall(r"  (\S+ #\d+)\s+(\w+) \(v\d+\)", output))


def main_output(argv: list[str], capsys) -> str:
    main(argv)
    return capsys.readouterr().out


def test_json_and_a_changed_row_as_a_module(tmp_path, postgres_url):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}) as system:
        system.place_order(make_request("ord-1", [(1, 2)]), timeout=5)
    copy_into_postgres(path, postgres_url)
    execute(
        postgres_url,
        "UPDATE saga_actors_events SET data = jsonb_set(data, '{order_id}', '\"ord-9\"') "
        "WHERE persistence_id = 'orders' AND sequence_nr = 1",
    )
    result = subprocess.run(
        [sys.executable, "-m", "saga_actors.persistence", "--json", postgres_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr  # a row that does not match its checksum
    document = json.loads(result.stdout)
    assert document["journal"] == postgres_url and document["size_bytes"] > 0
    assert document["schema_version"] == 1 and document["in_use_by"] is None
    assert document["checksums"]["mismatched"] == [
        {"table": "events", "persistence_id": "orders", "sequence_nr": 1}
    ]


def test_a_database_without_a_journal_or_unreachable_is_one_line_and_status_2(postgres_url, capsys):
    assert main([postgres_url]) == 2
    assert "holds no saga-actors journal" in capsys.readouterr().err
    unreachable = re.sub(r":\d+/", ":1/", postgres_url.replace("postgres@", "postgres:hunter2@"))
    assert main([unreachable]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m saga_actors.persistence: error: journal ") and "hunter2" not in err
