"""service.db.session.repositories: see docs/architecture.md."""
