"""Apply the Alembic migrations (``migrations/``) programmatically: ``upgrade head`` at service start.

PostgreSQL: the upgrade holds a transaction-level advisory lock, so two processes starting at once (compose
replicas, a CLI ``migrate`` next to ``serve``) do not race on ``CREATE TABLE``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

#: The folder holding alembic.ini, env.py and versions/.
MIGRATIONS_DIR: Path = Path(__file__).resolve().parents[2] / "migrations"
_ADVISORY_LOCK_ID = 0x706C6173  # "plas"


def alembic_config() -> Config:
    """The Alembic config of ``migrations/alembic.ini`` with an absolute script location."""
    cfg = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest revision id in ``migrations/versions``."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate the database of ``engine`` to ``revision``; returns the revision it ends at."""
    cfg = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(engine)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Migrate down (tests of the migrations; never called by the service)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
