"""Command-line plumbing that `demo.py` and `python -m saga_actors.examples.trip` share.

Not part of the public API. A bad journal path is one line on stderr and exit
status 2, found before anything runs where it can be (`journal_problem`), and
said truly when only opening it finds it out (`open_problem`); Ctrl-C and
SIGTERM stop the command where it checks, without a traceback (`StopRequest`),
with exit status 128 + the signal. Output cut short by its reader (`... | head`)
stops the command the same way, quietly, with exit status 141 (128 + SIGPIPE):
`output_closed`, `StopRequest.pipe_closed`, `run_stoppable`. Numbers on the
command line are written in ASCII digits (`whole_number`, `number`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import re
import select
import signal
import sqlite3
import stat
import sys
import threading
from collections.abc import Callable, Iterator

from saga_actors.persistence import JournalCorrupted, JournalInUse
from saga_actors.persistence.sqlite import LOCK_SUFFIX

__all__ = [
    "EMPTY",
    "EXIT_BROKEN_PIPE",
    "NotANumber",
    "StopRequest",
    "error",
    "file_problem",
    "flushed",
    "head_problem",
    "journal_problem",
    "new_lock_file",
    "number",
    "open_problem",
    "output_closed",
    "plural",
    "printable",
    "remove_stray_lock",
    "run_stoppable",
    "whole_number",
    "without_password",
]

# The first bytes of every SQLite database file (and so of every journal).
SQLITE_HEADER = b"SQLite format 3\x00"


def error(prog: str, message: str) -> int:
    """Say `message` on stderr as one line, as argparse says its errors; return exit status 2.

    What is not printable in it is escaped (`printable`): a path or a name read from a file
    (another program's table names, say) cannot break the line or drive the terminal.
    """
    sys.stderr.write(f"{prog}: error: {printable(message)}\n")
    return 2


def printable(text: str) -> str:
    """`text` with each character that is not printable (controls, line and paragraph
    separators, bidirectional overrides, ...) escaped as Python writes it: `\\x1b`, `\\n`,
    `\\u202e`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 restart`, `2 restarts`; `nouns` for an irregular plural (`1 entry`, `2 entries`)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


# --- numbers on the command line ---


class NotANumber(ValueError, argparse.ArgumentTypeError):
    """Not a number written in ASCII digits; argparse shows the message as it is."""


_WHOLE = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def whole_number(text: str) -> int:
    """`text` as an int: ASCII digits, a sign at most; else NotANumber.

    int() also takes digits of other scripts (Arabic-Indic `\\u0661\\u0660` is 10),
    underscores and surrounding spaces, which a count typed on a command line is not.
    """
    if _WHOLE.fullmatch(text) is None:
        raise NotANumber(f"expected a whole number, got {text!r}")
    return int(text)


def number(text: str) -> float:
    """`text` as a float: ASCII digits with a decimal point and an exponent at most (`0.5`,
    `1e-3`); else NotANumber. float() also takes other scripts' digits, `nan` and `inf`."""
    if _NUMBER.fullmatch(text) is None:
        raise NotANumber(f"expected a number, got {text!r}")
    return float(text)


def journal_problem(path: str, *, option: str = "--journal", otherwise: str = "leave it out") -> str | None:
    """Why `path` cannot be a journal, found before anything runs; None if it may be.

    One line that starts with `option` and the path. `otherwise` says what
    leaving the option out gives (e.g. "leave --journal out for an in-memory
    journal"). Looks only: nothing is created, opened for writing or locked.
    A new journal goes into a folder that exists: none is created for it.
    Whether a SQLite file is a journal is for the library to say when it opens
    it (`NotAJournal`); a file that is not a SQLite database at all is said here.
    """
    if not path:
        return f"{option} '': an empty path; give a file path, or {otherwise}"
    problem = file_problem(path, "journal file", read=True)
    if problem is None and os.path.exists(path):
        problem = head_problem(path)
        if problem == EMPTY:  # refused when it is opened, with what to do about it
            problem = None
    return None if problem is None else f"{option} {path}: {problem}"


def file_problem(path: str, kind: str, *, read: bool = False) -> str | None:
    """Why the file `path` (a `kind`, e.g. "journal file") cannot be written (and read, if
    `read`), or created if it does not exist; None if it may be. Looks only: nothing is created.

    Refused: a directory, what is not a regular file (a FIFO, a device), a symbolic
    link to nothing or in a loop, a name too long, a file or folder without the
    permission, a folder that does not exist (none is created).
    """
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        found = None
    except OSError as failed:
        if failed.errno == errno.ELOOP and os.path.islink(path):
            return "a symbolic link in a loop (it leads back to itself)"
        return f"cannot be opened: {failed.strerror or failed}"
    if found is not None:
        if stat.S_ISDIR(found.st_mode):
            return f"a directory, not a {kind}"
        if not stat.S_ISREG(found.st_mode):
            return f"not a regular file (a {kind} is one)"
        if not os.access(path, (os.R_OK if read else 0) | os.W_OK):
            return f"no permission to {'read and write' if read else 'write'} it"
        return None
    if os.path.islink(path):
        return f"a symbolic link to {os.readlink(path)!r}, which does not exist"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.lexists(folder):
        return f"cannot be created: no folder {folder} (create it first)"
    if not os.path.isdir(folder):
        return f"cannot be created: {folder} is not a directory"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot be created: no permission to write in {folder}"
    return None


EMPTY = "an empty file (0 bytes)"


def head_problem(path: str) -> str | None:
    """What the first bytes of the regular file `path` say against its being a journal: it
    `cannot be read: ...`, is `EMPTY`, or is `not a journal: not a SQLite database`; None if it
    may be one (a SQLite database: whether it is a journal is for the library to say)."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError as failed:
        return f"cannot be read: {failed.strerror or failed}"
    if not head:
        return EMPTY
    if head != SQLITE_HEADER:
        return "not a journal: not a SQLite database (a journal is a SQLite file)"
    return None


def new_lock_file(journal: str) -> str | None:
    """The path of `journal`'s lock file if there is none yet, else None: give it to
    `remove_stray_lock` when opening the journal is refused."""
    lock = os.path.realpath(journal) + LOCK_SUFFIX  # where the library puts it
    return None if os.path.lexists(lock) else lock


def remove_stray_lock(lock: str | None) -> None:
    """Remove the lock file a refused open of a journal left (`new_lock_file`), unless a process
    holds it now (it is that process's, made meanwhile).

    The library takes its writer lock, creating `<journal>.lock`, before it looks at the
    journal, and leaves the file when it then refuses the journal (another program's
    database, a newer schema). A writer that opened the file just before it is removed
    still cannot share the journal: the library locks the journal file itself too.
    """
    if lock is None:
        return
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # not made after all, or not a plain file
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.samestat(os.fstat(fd), os.lstat(lock)):
            os.unlink(lock)
    except OSError:  # held (BlockingIOError), or gone meanwhile
        pass
    finally:
        os.close(fd)


def open_problem(journal: str, failed: BaseException) -> str | None:
    """One true line for an error that opening `journal` raised; None if it is not such an error.

    An OSError names the file the system refused, which may not be the journal
    itself: its lock file beside it, or a folder on the way to it.
    """
    if isinstance(failed, (JournalCorrupted, JournalInUse)):  # NotAJournal included
        return str(failed)
    done = "opened" if os.path.lexists(journal) else "created"
    if isinstance(failed, OSError):
        reason = failed.strerror or str(failed)
        where = os.fsdecode(failed.filename) if failed.filename is not None else None
        if where is None or os.path.abspath(where) == os.path.abspath(journal):
            return f"journal {journal} cannot be {done}: {reason}"
        if not os.path.lexists(where):
            return f"journal {journal} cannot be {done}: cannot create {where} ({reason})"
        return f"journal {journal} cannot be {done}: {where}: {reason}"
    if isinstance(failed, sqlite3.Error):
        return f"journal {journal} cannot be {done}: {failed}"
    return None


# --- URLs shown ---


_SECRET_PARAMETERS = ("password", "passfile", "sslpassword")


def without_password(url: str) -> str:
    """`url` as it may be shown (a readiness line, a log, an error): its password, in the
    authority (`user:secret@host`) or as a query parameter (`?password=secret`), replaced by
    `***`. Text that is not such a URL (a file path) comes back as it is; a URL that cannot be
    parsed comes back as `<a URL that cannot be shown>`."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        userinfo, at, host = netloc.rpartition("@")
        if at and ":" in userinfo:
            netloc = f"{userinfo.partition(':')[0]}:***@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_PARAMETERS else v) for k, v in pairs], safe="*"
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<a URL that cannot be shown>"


# --- output cut short by its reader ---

# Exit status when the reader of the output went away (`| head`): 128 + SIGPIPE, what a
# command killed by SIGPIPE reports. The output is incomplete: no other verdict is claimed.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def output_closed() -> int:
    """After a write met a closed pipe (BrokenPipeError): return EXIT_BROKEN_PIPE, with stdout
    and stderr, whichever has lost its reader, pointed at /dev/null.

    What is still buffered for them, and whatever is written to them later (Python's own
    flush at exit too), then goes nowhere instead of failing again with a traceback. A
    stream still read (stderr on the terminal, say) is left as it is; stdout is discarded
    if no stream can be told to have lost its reader.
    """
    streams = [s for s in (sys.stdout, sys.stderr) if s is not None]
    gone = [s for s in streams if _reader_gone(s)]
    for stream in gone or streams[:1]:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, stream.fileno())
            finally:
                os.close(devnull)
    return EXIT_BROKEN_PIPE


def _reader_gone(stream: object) -> bool:
    """Whether `stream` is a pipe or socket whose reader has gone (poll says POLLERR or POLLHUP)."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no file descriptor (a test's capture)
        return False


def flushed(status: int) -> int:
    """`status`, once what is buffered for stdout and stderr is written: a closed pipe is met
    here, where the command handles it, rather than in Python's flush at exit."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    return status


def run_stoppable(stop: StopRequest, work: Callable[[], int], interrupted: str) -> int:
    """Run a command's `work` with `stop` handling Ctrl-C and SIGTERM; its exit status.

    Stopped by a signal (`work` raised KeyboardInterrupt at a `stop.check()`): says
    `interrupted` (one line) on stderr, returns 128 + the signal. A write that met a closed
    pipe, in `work` itself or in a thread (`stop.pipe_closed`): quietly EXIT_BROKEN_PIPE.
    Whatever `work` opened it closes on the way out (its `with` and `finally` blocks).
    """
    with stop.handling():
        try:
            try:
                return flushed(work())
            except BrokenPipeError:
                stop.pipe_closed()
            except KeyboardInterrupt:
                if not stop.output_lost():
                    sys.stderr.write(interrupted)
                    sys.stderr.flush()
        except BrokenPipeError:  # saying it met a closed stderr
            stop.pipe_closed()
        return stop.exit_status()


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the command to stop; it stops at the next point that checks.

    The handler raises nothing: a KeyboardInterrupt raised wherever the main
    thread happens to be can leave a lock half-taken (a thread pool's, a
    future's) and the program hung on exit. So the main thread waits in short
    slices and calls `check()` between them, which raises KeyboardInterrupt;
    the command turns that into `exit_status()`, 128 + the first signal
    received (130 for Ctrl-C, 143 for SIGTERM). A second signal while stopping
    changes nothing. A closed pipe asks the same, as SIGPIPE (`pipe_closed`): 141.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signals: list[int] = []  # the signals received, in order

    @contextlib.contextmanager
    def handling(self) -> Iterator[StopRequest]:
        """Catch SIGINT and SIGTERM within the block (main thread only); the handlers before it after."""
        self._event.clear()
        self.signals.clear()
        previous = {s: signal.signal(s, self._received) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _received(self, signum: int, frame: object) -> None:
        self.signals.append(signum)
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a stop request; True if one came."""
        return self._event.wait(timeout)

    def check(self) -> None:
        """Raise KeyboardInterrupt if a signal asked to stop."""
        if self._event.is_set():
            raise KeyboardInterrupt

    def pipe_closed(self) -> None:
        """A write met a closed pipe (BrokenPipeError), in any thread: stop as SIGPIPE would
        stop a command, quietly (`output_lost`), with the streams that lost their reader
        discarded (`output_closed`). Call it where the error is caught."""
        output_closed()
        self._received(signal.SIGPIPE, None)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around writes in a thread that must not die of a closed pipe: a BrokenPipeError
        in the block is a stop request (`pipe_closed`), not an exception."""
        try:
            yield
        except BrokenPipeError:
            self.pipe_closed()

    def output_lost(self) -> bool:
        """Whether the stop came first from a closed pipe: nothing is said about it."""
        return bool(self.signals) and self.signals[0] == signal.SIGPIPE

    def exit_status(self) -> int:
        """128 + the first signal (SIGPIPE for a closed pipe: 141); 130 if none was recorded."""
        return 128 + (self.signals[0] if self.signals else signal.SIGINT)
