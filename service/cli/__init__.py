"""service.cli.main: see docs/architecture.md."""
