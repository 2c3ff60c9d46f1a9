"""The benchmark suites registered by the engine (``discovery.benchmarks.registry.SUITES``), as plain JSON for the API.

Imported lazily: without ``discovery.benchmarks.registry`` the service still runs and lists no suites.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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


def _plain(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, depth + 1) for v in value]
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump(mode="json"), depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name), depth + 1)
            for f in dataclasses.fields(value)
            if not callable(getattr(value, f.name)) and not f.name.startswith("_")
        }
    if callable(value):
        return getattr(value, "__name__", str(value))
    return str(value)


def suite_info(name: str, suite: Any) -> dict[str, Any]:
    """A JSON description of one suite (its own ``definition()`` or ``to_dict()`` when it has one)."""
    if hasattr(suite, "definition") and callable(suite.definition):
        info = _plain(suite.definition())
    elif hasattr(suite, "to_dict") and callable(suite.to_dict):
        info = _plain(suite.to_dict())
    else:
        info = _plain(suite)
    if not isinstance(info, dict):
        info = {"definition": info}
    info.setdefault("name", name)
    return info


def suites_payload() -> list[dict[str, Any]]:
    """Every registered suite, described, sorted by name."""
    return [suite_info(name, suite) for name, suite in sorted(registered_suites().items())]


def suite_exists(name: str) -> bool:
    return name in registered_suites()
