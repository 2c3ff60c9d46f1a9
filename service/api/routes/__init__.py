"""The REST routes, one module per resource: jobs, rules, benchmarks, meta (health, suites, goal)."""
