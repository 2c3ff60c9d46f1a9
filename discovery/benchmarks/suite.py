"""The benchmark-suite contract: a :class:`Suite` is data (network, data set and split, protocol, metrics) plus the
runner that executes it; a runner gets a :class:`RunContext` and returns ``{"entries": [...]}``. Every family's
suites (discovery.benchmarks.fewshot, discovery.recurrent.suites, discovery.reservoir.suite) build this model;
discovery.benchmarks.registry lists them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Progress = Callable[[dict[str, Any]], None]
Runner = Callable[["Suite", "RunContext"], dict[str, Any]]


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


class SuiteSkipped(Exception):
    """Raised by a runner when the suite cannot run here (e.g. data not configured); the report says why."""


@dataclass(frozen=True)
class RunContext:
    """What a runner gets besides its (resolved) suite: the rule to score (None, a ``rules.Rule``, an expression
    string or a ready Learner), the seed, tiny mode, the device, an optional feedback override for the rule, and
    ``emit(event)`` for progress (events carry ``suite``, ``stage``, ``learner``, ``done``, ``total``)."""

    rule: Any
    seed: int
    tiny: bool
    device: str
    feedback: str | None
    emit: Callable[[dict[str, Any]], None]


class Suite(BaseModel):
    """A benchmark suite definition (data) and its runner.

    ``network``, ``data``, ``protocol`` are free-form sections the runner reads; ``tiny`` holds per-section
    overrides applied when ``tiny=True`` (``{"protocol": {"episodes": 4}, ...}``); ``protocol_text`` is a
    ``str.format_map`` template over the resolved sections (e.g. ``"{data[ways]}-way"``). ``runner(suite, ctx)``
    returns ``{"entries": [...]}`` (optionally ``skipped``, ``protocol``, ``notes``) — see :func:`run_suite`."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(min_length=1, max_length=100)
    version: str = Field(min_length=1, max_length=40)
    title: str = ""
    description: str = ""
    kind: str = "mlp-online"
    metric: str = Field("accuracy", description="what an entry's score is")
    higher_is_better: bool = Field(True, description="the direction of the score: False ranks the lowest first")
    rule_family: Literal["feedforward", "recurrent"] | None = Field(
        "feedforward", description="the rule family a given rule is scored as; None: the suite scores its own "
                                   "learners only (a given rule is noted, not run)")
    network: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    protocol: dict[str, Any] = Field(default_factory=dict)
    metrics: list[str] = Field(default_factory=list)
    baselines: list[str] = Field(default_factory=list)
    tiny: dict[str, dict[str, Any]] = Field(default_factory=dict)
    requires_env: list[str] = Field(default_factory=list)
    protocol_text: str = ""
    runner: Runner = Field(exclude=True)

    @field_validator("runner")
    @classmethod
    def _callable(cls, v: Any) -> Any:
        if not callable(v):
            raise TypeError("runner must be callable: runner(suite, ctx) -> dict")
        return v

    def resolved(self, tiny: bool) -> Suite:
        """The suite with its tiny overrides merged in (itself when ``tiny`` is False)."""
        if not tiny or not self.tiny:
            return self
        return self.with_overrides(self.tiny)

    def with_overrides(self, overrides: Mapping[str, Any]) -> Suite:
        """A copy with per-section overrides merged in: ``{"protocol": {"episodes": 50}, "baselines": [...]}``."""
        upd: dict[str, Any] = {}
        for section, over in overrides.items():
            if section in ("network", "data", "protocol"):
                upd[section] = {**getattr(self, section), **over}
            elif section in ("baselines", "metrics"):
                upd[section] = list(over)  # type: ignore[arg-type]
            else:
                raise ValueError(f"cannot override unknown section {section!r}")
        return self.model_copy(update=upd)

    def describe(self) -> str:
        """The protocol in words (``protocol_text`` filled with the resolved sections)."""
        if not self.protocol_text:
            return self.description
        return self.protocol_text.format_map({"network": self.network, "data": self.data,
                                              "protocol": self.protocol, "name": self.name})

    def definition(self, tiny: bool = False) -> dict[str, Any]:
        """JSON-able definition (for ``GET /api/suites``): every field but the runner, plus the runner's name."""
        s = self.resolved(tiny)
        d = s.model_dump(mode="json")
        d["runner"] = f"{getattr(self.runner, '__module__', '?')}.{getattr(self.runner, '__qualname__', '?')}"
        d["protocol_description"] = s.describe()
        return d
