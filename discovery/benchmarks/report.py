"""What a benchmark run reports: one :class:`SuiteEntry` per scored learner (a baseline or the rule under test)
and the :class:`BenchmarkReport` around them (the suite, its metric and direction, the protocol that ran). The
workers carry the report to the service, which stores one score row per entry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SuiteEntry(BaseModel):
    """One scored learner of a benchmark report: a baseline or the rule under test (``kind``), its score in the
    suite's metric with the 95 % t-interval ``ci95`` = [lo, hi] and its half-width (both None when the suite has
    no interval, e.g. a single deterministic run), and what else the runner measured."""

    model_config = ConfigDict(extra="allow")

    learner: str
    kind: Literal["baseline", "rule"] = "baseline"
    score: float | None = None
    ci95: list[float | None] | None = None
    ci95_halfwidth: float | None = None
    episodes: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    locality: str | None = None
    cost_per_sample_ms: float | None = None
    hyperparameters: dict[str, Any] | None = None
    tuning: Any = None

    @model_validator(mode="after")
    def _halfwidth_from_interval(self) -> SuiteEntry:
        """A runner that gives only ``ci95`` = [lo, hi] gets its half-width (hi − lo)/2."""
        if self.ci95_halfwidth is None and self.ci95 and len(self.ci95) == 2 and None not in self.ci95:
            self.ci95_halfwidth = (self.ci95[1] - self.ci95[0]) / 2  # type: ignore[operator]
        return self


class BenchmarkReport(BaseModel):
    """What ``run_suite`` returns (as JSON) and the workers carry to the service: the suite, its metric and
    direction, the protocol that ran and the scored entries."""

    model_config = ConfigDict(extra="allow")

    suite: str
    version: str | None = None
    title: str = ""
    kind: str = ""
    metric: str = "score"
    higher_is_better: bool = True
    protocol: str | None = None
    definition: dict[str, Any] = Field(default_factory=dict)
    overridden: bool = False
    seed: int = 0
    tiny: bool = False
    device: str = "cpu"
    torch_threads: int | None = None
    skipped: str | None = None
    entries: list[SuiteEntry] = Field(default_factory=list)
    notes: list[str] | str = Field(default_factory=list)
    wall_time_s: float | None = None

    def to_json(self) -> dict[str, object]:
        """The report as strict JSON, as its runner wrote it: fields left at their default are not added."""
        from discovery.results import jsonable

        return jsonable(self.model_dump(mode="json", exclude_unset=True))

    def rule_entry(self) -> int | None:
        """The index of the entry of the rule under test (``kind == "rule"``), None when only baselines ran."""
        return next((i for i, e in enumerate(self.entries) if e.kind == "rule"), None)
