"""The registry of named, versioned benchmark suites; ``run_suite`` scores tuned baselines and an optional
discovered rule (docs/science.md S3, S1) and returns a JSON-able report.

Every family's suites are listed here explicitly (:data:`BUILTIN_SUITES`): the feedforward ones
(discovery.benchmarks.fewshot), the recurrent fixed-point ones (discovery.recurrent.suites) and the reservoir one
(discovery.reservoir.suite). Other code may add suites with :func:`register_suite`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from discovery.benchmarks.fewshot import DEEP_ONLINE, EMNIST_5WAY, FA5_ONLINE
from discovery.benchmarks.suite import BenchmarkReport, Progress, RunContext, Suite, SuiteSkipped
from discovery.benchmarks.transfer import transfer_suite
from discovery.recurrent.suites import fixedpoint_mnist_suite, linear_suite
from discovery.reservoir.suite import reservoir_suite
from discovery.results import jsonable

#: The built-in suites, in registration order (registered when this module is imported).
BUILTIN_SUITES: tuple[Callable[[], Suite], ...] = (
    lambda: FA5_ONLINE, lambda: DEEP_ONLINE, lambda: EMNIST_5WAY, linear_suite, fixedpoint_mnist_suite,
    reservoir_suite, transfer_suite,
)

#: The registry: suite name → definition (latest registered version).
SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite, *, replace: bool = False) -> Suite:
    """Add a suite to :data:`SUITES`. Re-registering an identical definition is a no-op; a different one under
    an existing name needs ``replace=True`` (bump ``version`` when a definition changes)."""
    if not isinstance(suite, Suite):
        raise TypeError("register_suite expects a discovery.benchmarks.suite.Suite")
    old = SUITES.get(suite.name)
    if old is not None and not replace:
        same = old.model_dump() == suite.model_dump() and old.runner is suite.runner
        if not same:
            raise ValueError(f"suite {suite.name!r} is already registered (version {old.version}); "
                             "pass replace=True to override it")
        return old
    SUITES[suite.name] = suite
    return suite


def get_suite(name: str) -> Suite:
    """The registered suite called ``name``."""
    try:
        return SUITES[name]
    except KeyError:
        raise KeyError(f"unknown suite {name!r}; registered: {', '.join(sorted(SUITES))}") from None


def list_suites(tiny: bool = False) -> list[dict[str, Any]]:
    """Definitions of every registered suite (JSON-able), sorted by name."""
    return [SUITES[k].definition(tiny) for k in sorted(SUITES)]


def run_suite(name: str, rule: Any = None, *, tiny: bool = False, seed: int = 0, progress: Progress | None = None,
              device: str = "cpu", feedback: str | None = None, threads: int | None = None,
              overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run a suite: tune and score its baselines, score ``rule`` as it is (if given); JSON-able report.

    Returns a :class:`~discovery.benchmarks.suite.BenchmarkReport` as JSON: ``{suite, version, title, kind,
    metric, higher_is_better, protocol (text), definition, seed, tiny, device, wall_time_s,
    skipped (None or the reason), entries: [{learner, kind: "baseline"|"rule", score, ci95: [lo, hi],
    ci95_halfwidth, episodes, metrics, locality, cost_per_sample_ms, hyperparameters, tuning}], notes}``.
    ``rule``: None, a ``rules.Rule``, an expression string, or any Learner; ``feedback`` overrides the suite's
    feedback mode for the rule; ``threads`` sets torch's intra-op threads for the run (restored after; 1 is much
    faster for these small batched ops on a shared CPU); ``overrides`` (per section, applied after ``tiny``)
    runs a modified protocol, e.g. ``{"protocol": {"episodes": 50}, "baselines": ["BP"]}`` (the report's
    ``definition`` shows what ran, ``overridden`` flags it). Same seed → identical numbers (costs and wall time
    aside)."""
    suite = get_suite(name).resolved(tiny)
    if overrides:
        suite = suite.with_overrides(overrides)

    def emit(event: dict[str, Any]) -> None:
        if progress is not None:
            progress({"suite": suite.name, **event})

    ctx = RunContext(rule=rule, seed=int(seed), tiny=bool(tiny), device=str(device), feedback=feedback, emit=emit)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    try:
        out = dict(suite.runner(suite, ctx))
    except SuiteSkipped as exc:
        out = {"entries": [], "skipped": str(exc)}
    finally:
        wall = time.perf_counter() - t0
        n_threads = torch.get_num_threads()
        torch.set_num_threads(old_threads)
    report = {
        "suite": suite.name,
        "version": suite.version,
        "title": suite.title,
        "kind": suite.kind,
        "metric": suite.metric,
        "higher_is_better": suite.higher_is_better,
        "protocol": out.pop("protocol", None) or suite.describe(),
        "definition": suite.definition(),
        "overridden": bool(overrides),
        "seed": int(seed),
        "tiny": bool(tiny),
        "device": str(device),
        "torch_threads": n_threads,
        "skipped": out.pop("skipped", None),
        "entries": out.pop("entries", []),
        "wall_time_s": wall,
    }
    report.update(out)
    return jsonable(BenchmarkReport.model_validate(report))


for _factory in BUILTIN_SUITES:
    register_suite(_factory())
