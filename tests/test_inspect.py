"""`python -m saga_actors.persistence`: the journal inspector."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from saga_actors.actors import OrderSystem
from saga_actors.actors.codec import order_codec
from saga_actors.actors.order_saga import OrderSagaData
from saga_actors.actors.validation import validate_order
from saga_actors.persistence import SQLiteJournal
from saga_actors.persistence.__main__ import main
from saga_actors.sagas.engine import SagaStarted, StageStarted
from tests.conftest import DECLINED, make_request

ROOT = Path(__file__).resolve().parent.parent


def test_history_of_one_order_across_streams(tmp_path, capsys):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}) as system:
        system.place_order(make_request("ord-1", [(1, 2)]), timeout=5)
        system.place_order(make_request("ord-2", [(1, 1)], card=DECLINED), timeout=5)
    assert main([str(path), "ord-2"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "orders #",
        "OrderPlaced",
        "saga:order:ord-2 #1",
        "PaymentDeclined",
        "AbortDecided",
        "StockReleased",
        "OrderCancelled",
        "SagaAborted",
    ):
        assert expected in out
    assert "ord-1" not in out


def test_summary_names_unfinished_sagas(tmp_path, capsys):
    path = tmp_path / "o.db"
    journal = SQLiteJournal(path, order_codec())
    order = validate_order(make_request("stuck"))
    journal.append(
        "saga:order:stuck", [SagaStarted("stuck", OrderSagaData.from_order(order)), StageStarted(0)], 0
    )
    journal.close()
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "unfinished sagas (1)" in out and "saga:order:stuck" in out


def test_unknown_id_and_missing_file(tmp_path, capsys):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}):
        pass
    assert main([str(path), "nobody"]) == 1
    assert main([str(tmp_path / "missing.db")]) == 2
    assert "no journal file" in capsys.readouterr().err


def test_runs_as_a_module(tmp_path):
    path = tmp_path / "o.db"
    with OrderSystem(journal_path=path, stock={1: 5}):
        pass
    result = subprocess.run(
        [sys.executable, "-m", "saga_actors.persistence", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "inventory" in result.stdout and "unfinished sagas: none" in result.stdout


def test_a_path_with_uri_characters_is_read_as_a_path(tmp_path):
    from saga_actors import OrderSystem
    from tests.conftest import make_request

    path = tmp_path / "shop?2024#a%20b.db"
    with OrderSystem(journal_path=path, stock={101: 5}) as system:
        system.place_order(make_request("i1", [(101, 1)]), timeout=5)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "saga_actors.persistence", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "orders" in result.stdout and "inventory" in result.stdout
    after = {p.name for p in tmp_path.iterdir()}
    companions = {path.name + "-wal", path.name + "-shm"}  # WAL readers may recreate these
    assert after - companions == set(before) - companions  # no stray file named after a piece of the path
