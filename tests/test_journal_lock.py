"""A journal has one writer: a second open of the same SQLite file, in another
process or in this one, is refused while the first holds it."""

from __future__ import annotations

import fcntl
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest

from saga_actors.persistence import JournalInUse, NotAJournal, SQLiteJournal
from tests.test_journal_contract import CODEC, Happened

READY_TIMEOUT = 30.0

# A second process: opens the journal, writes one event, says "ready", then
# holds the journal until its stdin closes (or it is killed).
HOLDER = textwrap.dedent(
    """
    import sys
    from dataclasses import dataclass
    from saga_actors.persistence import EventCodec, SQLiteJournal

    @dataclass(frozen=True)
    class Happened:
        n: int
        note: str = ""

    codec = EventCodec()
    codec.register(Happened)
    journal = SQLiteJournal(sys.argv[1], codec)
    journal.append("held", [Happened(1, "from the holder")], 0)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "orders.db"


@pytest.fixture
def holder(path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the journal at `path`, once it has said it is ready."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        readable, _, _ = select.select([child.stdout], [], [], READY_TIMEOUT)
        line = child.stdout.readline() if readable else ""
        if line.strip() != "ready":
            child.kill()
            _, errors = child.communicate(timeout=READY_TIMEOUT)
            pytest.fail(f"the holder process did not get ready: {line!r} {errors}")
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=READY_TIMEOUT)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def _lock_is_free(path) -> bool:
    """Whether the journal's lock could be taken now (taken and dropped at once)."""
    fd = os.open(f"{path}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases it, if taken
    return True


def _journal_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "journal-writer"]


def test_second_journal_in_the_same_process_is_refused(path):
    first = SQLiteJournal(path, CODEC)
    try:
        threads_before = set(threading.enumerate())
        with pytest.raises(JournalInUse) as refused:
            SQLiteJournal(path, CODEC)
        assert refused.value.path == str(path)
        assert refused.value.holder_pid == os.getpid()
        assert str(path) in str(refused.value)
        assert f"in use by process {os.getpid()}" in str(refused.value)
        assert "this process" in str(refused.value)
        assert set(threading.enumerate()) == threads_before, "a refused open left a thread running"
        assert first.append("p", [Happened(1)], 0) == 1  # the holder is unaffected
    finally:
        first.close()


def test_journal_in_use_is_a_runtime_error_that_survives_pickling(path):
    error = JournalInUse("/x/orders.db", 1234)
    assert isinstance(error, RuntimeError)
    assert str(error) == "journal /x/orders.db is in use by process 1234; stop that process first"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.holder_pid, str(copy)) == (error.path, error.holder_pid, str(error))
    assert "pid not recorded" in str(JournalInUse("/x/orders.db", None))


def test_close_releases_the_lock_and_reopening_works(path):
    journal = SQLiteJournal(path, CODEC)
    journal.append("p", [Happened(1)], 0)
    journal.close()
    assert _lock_is_free(path)
    other = SQLiteJournal(path, CODEC)  # the engine stopped; another may start
    other.close()
    journal.open()  # the engine starts again
    try:
        assert journal.append("p", [Happened(2)], 1) == 2
        with pytest.raises(JournalInUse):
            SQLiteJournal(path, CODEC)
    finally:
        journal.close()
    journal.close()  # idempotent
    assert _lock_is_free(path)


def test_lock_file_records_the_holders_pid(path):
    journal = SQLiteJournal(path, CODEC)
    try:
        with open(f"{path}.lock") as lock_file:
            assert lock_file.read().strip() == str(os.getpid())
        assert not _lock_is_free(path)
    finally:
        journal.close()


def test_journal_held_by_another_process_is_refused_naming_its_pid(path, holder):
    threads_before = set(threading.enumerate())
    with pytest.raises(JournalInUse) as refused:
        SQLiteJournal(path, CODEC)
    assert refused.value.holder_pid == holder.pid
    assert str(refused.value) == (
        f"journal {path} is in use by process {holder.pid}; stop that process first"
    )
    assert set(threading.enumerate()) == threads_before
    assert not path.with_name("orders.db.creating").exists()


def test_killed_holder_releases_the_journal(path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=READY_TIMEOUT)
    with open(f"{path}.lock") as lock_file:
        assert lock_file.read().strip() == str(holder.pid)  # stale, and irrelevant
    journal = SQLiteJournal(path, CODEC)
    try:
        assert [e.event for e in journal.replay("held")] == [Happened(1, "from the holder")]
        with open(f"{path}.lock") as lock_file:
            assert lock_file.read().strip() == str(os.getpid())
    finally:
        journal.close()


def test_holder_that_closes_releases_the_journal(path, holder):
    assert holder.stdin is not None
    holder.stdin.close()  # the holder returns, its journal's lock goes with its process
    holder.wait(timeout=READY_TIMEOUT)
    journal = SQLiteJournal(path, CODEC)
    journal.close()


@pytest.mark.parametrize(
    ("content", "problem"), [(b"", "empty file"), (b"not a database at all" * 100, "not a SQLite")]
)
def test_failed_open_leaves_nothing_running_and_nothing_locked(path, content, problem):
    path.write_bytes(content)
    threads_before = set(threading.enumerate())
    with pytest.raises(NotAJournal, match=problem):
        SQLiteJournal(path, CODEC)
    assert set(threading.enumerate()) == threads_before
    assert _journal_threads() == []
    assert _lock_is_free(path)
    assert path.read_bytes() == content  # left as it was


# --- one writer, whatever path reaches the journal ---


def _journal(path):
    return SQLiteJournal(str(path), CODEC)


@pytest.mark.parametrize("alias", ["symlink", "hard link", "lock file deleted"])
def test_a_second_writer_reaching_the_journal_another_way_is_refused(tmp_path, alias):
    real = tmp_path / "orders.db"
    first = _journal(real)
    try:
        other = tmp_path / "alias.db"
        if alias == "symlink":
            other.symlink_to(real)
        elif alias == "hard link":
            os.link(real, other)
        else:
            os.unlink(str(real) + ".lock")
            other = real
        with pytest.raises(JournalInUse):
            _journal(other)
        first.append("p", [Happened(1, "still mine")], 0)
    finally:
        first.close()
    _journal(real).close()  # free again


def test_a_dangling_symlink_is_refused_not_replaced(tmp_path):
    link = tmp_path / "orders.db"
    link.symlink_to(tmp_path / "unmounted" / "orders.db")
    with pytest.raises(NotAJournal, match="does not exist"):
        _journal(link)
    assert link.is_symlink()


def test_a_directory_is_refused(tmp_path):
    (tmp_path / "orders.db").mkdir()
    with pytest.raises(NotAJournal, match="directory"):
        _journal(tmp_path / "orders.db")


def test_another_programs_sqlite_database_is_refused_and_left_as_it_was(tmp_path):
    import sqlite3

    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers(name TEXT)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(NotAJournal, match="customers"):
        _journal(path)
    assert path.read_bytes() == before
    assert not (tmp_path / "app.db-wal").exists()


def test_a_truncated_journal_is_refused_naming_the_path(tmp_path):
    path = tmp_path / "orders.db"
    journal = _journal(path)
    journal.append("p", [Happened(i, "x" * 50) for i in range(2000)], 0)
    journal.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(NotAJournal) as refused:
        journal = _journal(path)
        list(journal.replay("p"))  # if the damage only shows when read
    assert str(path) in str(refused.value)


def test_a_refused_file_keeps_its_mode(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("hello\n")
    os.chmod(path, 0o644)
    with pytest.raises(NotAJournal):
        _journal(path)
    assert (path.stat().st_mode & 0o777) == 0o644 and path.read_text() == "hello\n"
