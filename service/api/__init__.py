"""service.api: see docs/architecture.md."""
