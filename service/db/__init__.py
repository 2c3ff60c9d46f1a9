"""service.db.session: see docs/architecture.md."""
