"""Alembic environment: migrate the database named by the caller's connection or by the settings.

``service.db.migrate.upgrade`` passes an open connection in ``config.attributes["connection"]``; from the command
line the URL comes from ``-x url=...``, else ``sqlalchemy.url``, else ``PLASTICITY_DATABASE_URL`` / the SQLite
file in ``PLASTICITY_DATA_DIR`` (service.settings).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from service.db.models import Base
from service.db.session import make_engine
from service.settings import load_settings

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    return url or load_settings().database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run against the caller's connection, or a fresh engine."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
