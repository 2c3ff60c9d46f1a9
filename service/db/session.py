"""Database engine and sessions for SQLite (default) and PostgreSQL (``postgresql+psycopg://``).

SQLite runs in WAL mode with a busy timeout and foreign keys on, so the dispatcher thread and the request
handlers can write concurrently. JSON values are written with non-finite floats (NaN/∞ from a diverged episode)
turned into ``null``: PostgreSQL's ``json`` type rejects ``NaN``, and the API must emit valid JSON anyway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from discovery.results import jsonable
from service.db import read_fields
from service.settings import PoolSize


def _json_dumps(value: Any) -> str:
    return json.dumps(jsonable(value), allow_nan=False, default=str)


def make_engine(url: str, pool: PoolSize | None = None) -> Engine:
    """An engine for ``url``; creates the SQLite file's folder when needed. ``pool``: the connection pool's size
    (default: SQLAlchemy's 5 + 10 overflow, 30 s wait); the service sizes it to its concurrency
    (``Settings.pool``, docs/operations.md "Reads at scale")."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"json_serializer": _json_dumps, "future": True}
    in_memory = parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")
    if pool is not None and not in_memory:
        kwargs.update(pool_size=pool.size, max_overflow=pool.overflow, pool_timeout=pool.timeout_s)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (handlers serialize after committing); their flushes
    keep the rules' read fields current (``service.db.read_fields``)."""
    read_fields.install()
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def redact_url(url: str) -> str:
    """The URL without its password, for logs and ``/api/health``."""
    return make_url(url).render_as_string(hide_password=True)
