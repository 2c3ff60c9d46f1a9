"""Alembic migrations of the service database (``migrations/alembic.ini``; applied by ``service.db.migrate``)."""
