"""service.client.http: see docs/architecture.md."""
