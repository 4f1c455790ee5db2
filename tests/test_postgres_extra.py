"""Without the extra saga-actors[postgres], everything but PostgresJournal works, and making one
says which extra to install. Runs without a server."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_persistence_package_imports_without_psycopg_and_names_the_extra():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["psycopg"] = None  # as if not installed: importing it raises ImportError
        sys.modules["psycopg_pool"] = None
        import saga_actors
        from saga_actors.persistence import EventCodec, InMemoryJournal, PostgresJournal
        InMemoryJournal()
        try:
            PostgresJournal("postgresql://u:secret@localhost/db", EventCodec())
        except ImportError as error:
            print(error)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "saga-actors[postgres]" in result.stdout and "secret" not in result.stdout
