"""The benchmark-suite contract: a :class:`Suite` is data (network, data set and split, protocol, metrics) plus the
runner that executes it; a runner gets a :class:`RunContext` and returns ``{"entries": [...]}``. Every family's
suites (discovery.benchmarks.fewshot, discovery.recurrent.suites, discovery.reservoir.suite) build this model;
discovery.benchmarks.registry lists them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from discovery.benchmarks.report import BenchmarkReport, SuiteEntry

Progress = Callable[[dict[str, Any]], None]
Runner = Callable[["Suite", "RunContext"], dict[str, Any]]

__all__ = ["BenchmarkReport", "Progress", "RunContext", "Runner", "Suite", "SuiteEntry", "SuiteSkipped"]


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
    rule_family: Literal["feedforward", "recurrent", "reward"] | None = Field(
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
