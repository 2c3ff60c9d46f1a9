"""service.web: see docs/architecture.md."""
