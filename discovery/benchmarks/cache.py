"""Baselines computed once per (suite, suite version, seed, size), and the paired comparison of a rule with them.

The baselines of a suite do not depend on the rule under test: they are tuned on meta-train episodes and scored
on held-out episodes that are fixed by the seed. A :class:`BaselineSet` is that part of a suite report (every
baseline entry with its per-episode values), stored by the service and reused by every later rule benchmark on
the same key; the rule is then scored alone, on the same held-out episodes and initial weights (the samplers are
re-seeded per learner), so its numbers equal those of a full run with the same seed.

Paired comparison of the rule r with a baseline b on the same E episodes: d_i = s_i(r) − s_i(b),
Δ = mean d, 95 % CI = Δ ± t_{0.975, E−1} · sd(d)/√E (``discovery.analysis.stats.paired_difference``). The
verdict reads the interval in the suite's direction: "better" when it lies entirely on the good side of 0
(above for higher-is-better, below for lower-is-better), "worse" when entirely on the other, else
"not distinguishable".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from discovery.analysis.stats import paired_difference
from discovery.benchmarks.progress import BenchmarkProgress, ProgressTracker, within
from discovery.benchmarks.report import BenchmarkReport
from rules.base import CoefficientRule

Verdict = Literal["better", "worse", "not distinguishable"]
#: Where an entry keeps its per-episode (per-seed) values, in the order looked up.
PAIRED_KEYS: tuple[tuple[str, ...], ...] = (("per_episode",), ("metrics", "per_episode_accuracy"),
                                            ("metrics", "deviation_per_seed"))
#: Share of a first benchmark's progress bar that the baselines' tuning takes (the rule is scored in the rest).
TUNED_SHARE = 0.95
#: Suite kinds whose runners score only their built-in learners (a rule is never run there; the fixed-point suites
#: score any recurrent rule beside the published ones).
RULELESS_KINDS: frozenset[str] = frozenset()


class BaselineKey(BaseModel):
    """What a cached baseline set is valid for; a new suite version is a new key (the old set is not used)."""

    suite: str
    version: str
    seed: int
    tiny: bool


class BaselineSet(BaseModel):
    """The tuned and scored baselines of one key: their suite entries (with per-episode values), the suite's
    metric and direction, and how they were computed (``tuned_with``: "fan-out" Ray tasks or "serial")."""

    key: BaselineKey
    metric: str = "accuracy"
    higher_is_better: bool = True
    entries: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    skipped: str | None = None
    tuned_with: str = "serial"
    wall_time_s: float | None = None

    @classmethod
    def from_report(cls, report: Mapping[str, Any], tuned_with: str = "serial") -> BaselineSet:
        """The baseline part of a suite report (``run_suite``'s JSON)."""
        key = BaselineKey(suite=str(report["suite"]), version=str(report["version"]), seed=int(report["seed"]),
                          tiny=bool(report["tiny"]))
        return cls(key=key, metric=str(report.get("metric") or "accuracy"),
                   higher_is_better=bool(report.get("higher_is_better", True)),
                   entries=[dict(e) for e in report.get("entries") or [] if e.get("kind", "baseline") != "rule"],
                   notes=list(report.get("notes") or []), skipped=report.get("skipped"), tuned_with=tuned_with,
                   wall_time_s=report.get("wall_time_s"))


class PairedVerdict(BaseModel):
    """The rule minus one baseline on the same episodes: mean difference, its 95 % t-interval, the verdict."""

    delta: float | None
    ci95: list[float | None]
    n: int
    verdict: Verdict


def key_for(suite: str, *, tiny: bool, seed: int) -> BaselineKey:
    """The cache key of a suite as registered now (its current version)."""
    from discovery.benchmarks.registry import get_suite

    return BaselineKey(suite=suite, version=str(get_suite(suite).version), seed=int(seed), tiny=bool(tiny))


def scores_rules(suite: Any) -> bool:
    """Whether the suite's runner scores a given rule (``Suite.scores_rules`` when defined, else by kind)."""
    explicit = getattr(suite, "scores_rules", None)
    return bool(explicit) if explicit is not None else getattr(suite, "kind", "") not in RULELESS_KINDS


def paired_values(entry: Mapping[str, Any]) -> list[float] | None:
    """The per-episode (or per-seed) values behind an entry's score, None when it has none."""
    for path in PAIRED_KEYS:
        value: Any = entry
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, list) and value:
            return [float("nan") if v is None else float(v) for v in value]
    return None


def verdict(lo: float | None, hi: float | None, higher_is_better: bool = True) -> Verdict:
    """Read a 95 % interval of rule − baseline in the suite's direction."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "not distinguishable"
    if lo > 0:
        return "better" if higher_is_better else "worse"
    if hi < 0:
        return "worse" if higher_is_better else "better"
    return "not distinguishable"


def compare(rule_entry: Mapping[str, Any], baselines: Sequence[Mapping[str, Any]],
            higher_is_better: bool = True) -> dict[str, PairedVerdict]:
    """learner → paired difference of the rule with that baseline (baselines without paired values of the same
    length are left out)."""
    mine = paired_values(rule_entry)
    out: dict[str, PairedVerdict] = {}
    if mine is None:
        return out
    for b in baselines:
        theirs = paired_values(b)
        if theirs is None or len(theirs) != len(mine):
            continue
        d = paired_difference(mine, theirs)
        lo, hi = d.ci95
        out[str(b["learner"])] = PairedVerdict(delta=d.delta, ci95=[lo, hi], n=d.n,
                                               verdict=verdict(lo, hi, higher_is_better))
    return out


def compare_cells(rule_entry: Mapping[str, Any], baselines: Sequence[Mapping[str, Any]],
                  higher_is_better: bool = True) -> None:
    """Per-cell paired differences, for suites whose entries break their score into ``metrics.cells`` (the
    transfer suite): each rule cell gets ``vs`` = {baseline: PairedVerdict} against the baseline's cell of the same
    name, on the same episodes. In place; entries without cells are left alone."""
    cells = (rule_entry.get("metrics") or {}).get("cells")
    if not isinstance(cells, list):
        return
    for cell in cells:
        vs: dict[str, Any] = {}
        for b in baselines:
            theirs = next((c for c in (b.get("metrics") or {}).get("cells") or [] if c.get("cell") == cell.get("cell")),
                          None)
            if theirs is None or len(theirs.get("per_episode") or []) != len(cell.get("per_episode") or []):
                continue
            d = paired_difference(cell["per_episode"], theirs["per_episode"])
            lo, hi = d.ci95
            vs[str(b["learner"])] = PairedVerdict(delta=d.delta, ci95=[lo, hi], n=d.n,
                                                  verdict=verdict(lo, hi, higher_is_better)).model_dump()
        cell["vs"] = vs


def tune_serial(suite: str, *, tiny: bool, seed: int, progress: Callable[[BenchmarkProgress], None] | None = None,
                device: str = "cpu", threads: int | None = None) -> BaselineSet:
    """Tune and score the baselines in this process, one after the other (``run_suite`` without a rule)."""
    from discovery.benchmarks.registry import get_suite, run_suite

    tracker = ProgressTracker(progress, list(get_suite(suite).resolved(tiny).baselines))
    report = run_suite(suite, None, tiny=tiny, seed=seed, progress=tracker.on_suite_event, device=device,
                       threads=threads)
    return BaselineSet.from_report(report, tuned_with="serial")


def score_with_baselines(suite: str, rule: Any, baselines: BaselineSet, *, cached: bool,
                         progress: Callable[[BenchmarkProgress], None] | None = None, device: str = "cpu",
                         feedback: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """The suite report of ``rule`` against ``baselines``: the rule alone is run (none of the baselines), its
    entry gets ``vs`` (paired differences), the report gets the baselines' entries, ``baselines``
    ("cached" | "tuned"), ``vs`` and ``baseline_key``."""
    from discovery.benchmarks.registry import get_suite, run_suite

    definition = get_suite(suite)
    t0 = time.perf_counter()
    rule_entries: list[dict[str, Any]] = []
    report: dict[str, Any]
    if rule is not None and scores_rules(definition):
        tracker = ProgressTracker(progress, ["rule"], baselines="cached" if cached else "tuning")
        report = run_suite(suite, rule, tiny=baselines.key.tiny, seed=baselines.key.seed,
                           progress=tracker.on_suite_event, device=device, feedback=feedback, threads=threads,
                           overrides={"baselines": []})
        rule_entries = [e for e in report.get("entries") or [] if e.get("kind") == "rule"]
        report["definition"] = definition.resolved(baselines.key.tiny).definition()
        report["overridden"] = False
    else:
        report = {"suite": suite, "version": baselines.key.version, "title": definition.title,
                  "kind": definition.kind, "protocol": definition.resolved(baselines.key.tiny).describe(),
                  "definition": definition.resolved(baselines.key.tiny).definition(), "overridden": False,
                  "seed": baselines.key.seed, "tiny": baselines.key.tiny, "device": device,
                  "notes": list(baselines.notes), "skipped": baselines.skipped}
    vs: dict[str, Any] = {}
    for entry in rule_entries:
        vs = {k: v.model_dump() for k, v in compare(entry, baselines.entries, baselines.higher_is_better).items()}
        entry["vs"] = vs
        entry.setdefault("metrics", {})["vs"] = vs
        compare_cells(entry, baselines.entries, baselines.higher_is_better)
    report.update({
        "metric": baselines.metric,
        "higher_is_better": baselines.higher_is_better,
        "entries": [*baselines.entries, *rule_entries],
        "baselines": "cached" if cached else "tuned",
        "baseline_key": baselines.key.model_dump(),
        "baseline_wall_time_s": baselines.wall_time_s,
        "tuned_with": baselines.tuned_with,
        "vs": vs,
        "rule_wall_time_s": time.perf_counter() - t0,
    })
    if baselines.skipped and not report.get("skipped"):
        report["skipped"] = baselines.skipped
    return report


def run_benchmark(suite: str, rule: CoefficientRule | None, *, tiny: bool, seed: int,
                  baselines: BaselineSet | None = None, tune: Callable[..., BaselineSet] | None = None,
                  progress: Callable[[BenchmarkProgress], None] | None = None, device: str = "cpu",
                  feedback: str | None = None, threads: int | None = None) -> BenchmarkReport:
    """A benchmark of ``rule`` (None: baselines only) on ``suite``: with ``baselines`` (a cached set for this
    key) only the rule runs; without, ``tune(suite, tiny=, seed=, progress=, device=)`` (default
    :func:`tune_serial`; the workers pass their Ray fan-out) computes them first, and the report carries them
    as ``baseline_set`` for the caller to store."""
    t0 = time.perf_counter()
    cached = baselines is not None
    rule_progress = progress
    if baselines is None:  # one progress bar over both parts: the tuning, then the rule (≈ one learner's scoring)
        split = TUNED_SHARE if rule is not None else 1.0
        tuner = tune or tune_serial
        tune_progress, rule_progress = within(progress, 0.0, split), within(progress, split, 1.0)
        baselines = tuner(suite, tiny=tiny, seed=seed, progress=tune_progress, device=device)
    report = score_with_baselines(suite, rule, baselines, cached=cached, progress=rule_progress, device=device,
                                  feedback=feedback, threads=threads)
    if not cached:
        report["baseline_set"] = baselines.model_dump()
    report["wall_time_s"] = time.perf_counter() - t0
    return BenchmarkReport.model_validate(report)


def split_baseline_set(report: BenchmarkReport) -> tuple[BenchmarkReport, BaselineSet | None]:
    """A report of a run that tuned its baselines, without its ``baseline_set``, and that set (to cache); a
    report without one (or with an unreadable one) and None."""
    extra = dict(report.model_extra or {})
    raw = extra.pop("baseline_set", None)
    if not raw:
        return report, None
    data = report.model_dump(exclude_unset=True)
    data.pop("baseline_set", None)
    try:
        baselines = BaselineSet.model_validate(raw)
    except ValidationError:
        baselines = None
    return BenchmarkReport.model_validate(data), baselines
