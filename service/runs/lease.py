"""The dispatcher's lease: exactly one active dispatcher per database, however many server processes run.

Every server process starts a dispatcher; only the one that holds the lease recovers interrupted work and drives
Ray, the others wait as standbys and take over when the holder's process ends (the lock dies with it):
* PostgreSQL — a session-level advisory lock (``pg_try_advisory_lock``) held on one dedicated connection;
* SQLite (and any other database) — an exclusive ``flock`` on a file beside the database (or in the data folder).
Both are released by the operating system or the server when the holding process dies, so a crashed holder
never blocks a standby (docs/operations.md, "Several server processes").
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

log = logging.getLogger("plasticity.lease")

#: the advisory-lock key of the dispatcher ("dspt"), distinct from the migrations' lock
ADVISORY_KEY = 0x64737074


def lock_file_for(database_url: str, data_dir: Path) -> Path:
    """Where the file lock of a non-PostgreSQL database lives: beside a SQLite file, else in the data folder."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).resolve().with_suffix(".dispatcher.lock")
    return data_dir / "dispatcher.lock"


class DispatcherLease:
    """A non-blocking, process-wide lease on the right to dispatch (see the module docstring)."""

    def __init__(self, engine: Engine, data_dir: Path):
        self.engine = engine
        self.postgres = engine.url.get_backend_name() == "postgresql"
        self.path = lock_file_for(engine.url.render_as_string(hide_password=False), data_dir)
        self._conn: Connection | None = None
        self._file: IO[bytes] | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lease now (a PostgreSQL holder checks that its connection lives)."""
        if self._file is not None:
            return True
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - the connection (and with it the lock) is gone
            self._drop_connection()
            return False

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this process holds it afterwards."""
        if self.held:
            return True
        return self._acquire_advisory() if self.postgres else self._acquire_file()

    def release(self) -> None:
        """Give the lease back (a standby takes over at its next try)."""
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
            except Exception:
                log.debug("advisory unlock failed", exc_info=True)
            self._drop_connection()

    def _acquire_advisory(self) -> bool:
        conn = self.engine.connect()
        try:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar())
            conn.commit()
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def _acquire_file(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 - held open as long as the lease
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(str(os.getpid()).encode())
        handle.flush()
        self._file = handle
        return True

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                log.debug("closing the lease connection failed", exc_info=True)
            self._conn = None
