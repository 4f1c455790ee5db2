"""For the tests of the commands (demo.py, the trip example): what a hostile user does to them."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# What the pipe holds: a page. The command under test writes more than twice as much
# (what `head` reads at once, and then a full pipe), so it is still writing when
# `head` exits, and meets the closed pipe whatever the timing.
PIPE_BYTES = 4096


def piped_into_head(command: list[str], cwd: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run `command | head -1` through a pipe of PIPE_BYTES; (the command's exit status,
    what head printed, the command's stderr)."""
    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        pytest.skip("the pipe's size cannot be set here (F_SETPIPE_SZ is Linux's)")
    read, write = os.pipe()
    try:
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        assert fcntl.fcntl(write, fcntl.F_GETPIPE_SZ) == PIPE_BYTES
        tool = subprocess.Popen(command, cwd=cwd, stdout=write, stderr=subprocess.PIPE, text=True)
        head = subprocess.Popen(["head", "-1"], stdin=read, stdout=subprocess.PIPE, text=True)
    finally:
        os.close(read)  # theirs now: head is the only reader, the command the only writer
        os.close(write)
    try:
        first, _ = head.communicate(timeout=timeout)
        _, err = tool.communicate(timeout=timeout)
    finally:
        for process in (tool, head):
            if process.poll() is None:  # the test failed: stop it all the same
                process.kill()
                process.communicate()
    return tool.returncode, first, err


def bad_journal_files(folder: Path) -> None:
    """In `folder`: `dangling` (a symbolic link to `nowhere.db`, which does not exist), `loop1`
    and `loop2` (links to each other), `other.db` (another program's SQLite database)."""
    (folder / "dangling").symlink_to("nowhere.db")
    (folder / "loop1").symlink_to("loop2")
    (folder / "loop2").symlink_to("loop1")
    with sqlite3.connect(folder / "other.db") as db:
        db.execute("CREATE TABLE t (x)")
    db.close()


# Numbers not in ASCII digits, which int() and float() take: (the text, what it was taken as).
NOT_ASCII_NUMBERS = [
    ("\u0661\u0660", "10 in Arabic-Indic digits"),
    ("\u0967", "1 in Devanagari"),
    ("\uff15", "a fullwidth 5"),
    ("1_0", "10"),
    (" 10", "10"),
]


def assert_number_refused(parse: Callable[[list[str]], Any], option: str, text: str, capsys: Any) -> None:
    """`parse([option, text])` exits 2, saying which option wanted a number and what it got."""
    with pytest.raises(SystemExit) as stopped:
        parse([option, text])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected a" in err and repr(text) in err, err
