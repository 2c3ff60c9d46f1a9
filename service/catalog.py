"""The benchmark suites registered by the engine (``discovery.benchmarks.registry.SUITES``), as plain JSON for the API.

Imported lazily: without ``discovery.benchmarks.registry`` the service still runs and lists no suites.
"""

from __future__ import annotations

from typing import Any

from discovery.results import jsonable

#: The pseudo-suite of the leaderboard that ranks discovered rules by their held-out accuracy on the task they
#: were discovered on (no baselines; tasks differ between rules, so compare within a task).
DISCOVERY_SUITE = "discovery"
DISCOVERY_DESCRIPTION = (
    "Discovered rules ranked by their held-out accuracy (mean ± 95 % CI over held-out "
    "episodes) on the task of the job that found them. Benchmark a rule on a named suite to "
    "compare it with the baselines under one protocol."
)


def registered_suites() -> dict[str, Any]:
    """``discovery.benchmarks.registry.SUITES``, or ``{}`` when the module is not available."""
    try:
        from discovery.benchmarks import registry as suites
    except ImportError:
        return {}
    return dict(getattr(suites, "SUITES", {}) or {})


def suite_info(name: str, suite: Any) -> dict[str, Any]:
    """The JSON definition of one suite: its ``Suite.definition()`` (discovery.benchmarks.suite)."""
    info = jsonable(suite.definition())
    info.setdefault("name", name)
    return info


def suites_payload() -> list[dict[str, Any]]:
    """Every registered suite, described, sorted by name."""
    return [suite_info(name, suite) for name, suite in sorted(registered_suites().items())]


def suite_exists(name: str) -> bool:
    return name in registered_suites()
