"""service.runs: see docs/architecture.md."""
