"""Progress of a benchmark run as the engine reports it and the service shows it (phase, learner i of n,
episode j of J, elapsed, estimate).

The estimate extrapolates the elapsed wall time t over the fraction f ∈ (0, 1] of the work done:
remaining ≈ t · (1 − f) / f. The fraction counts learners as equal units, the current learner by its own
progress: f = (i − 1 + u) / n with u = j / J while scoring; a serial tuning counts as the first
``TUNE_SHARE`` of a learner's unit (tuning evaluates ~2× the episodes of scoring), the fan-out reports its
own fraction (tasks done / tasks planned).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

#: Share of a learner's work that its (serial) tuning takes: 9 points × 50 episodes against 200 scored.
TUNE_SHARE = 0.7


class BenchmarkProgress(BaseModel):
    """The latest progress of a benchmark run (``GET /api/benchmarks/{id}`` → ``progress``)."""

    kind: Literal["benchmark"] = "benchmark"
    phase: Literal["tune", "score"]
    baselines: Literal["cached", "tuning"] = "tuning"
    learner: str | None = None
    learner_index: int = 1  # i (1-based) of n
    learners: int = 1
    episode: int | None = None  # j of J: episodes (scoring) or grid points (tuning) done for this learner
    total: int | None = None
    fraction: float = 0.0
    elapsed: float = Field(0.0, description="seconds since the run started")
    remaining: float | None = Field(None, description="estimated seconds left: elapsed · (1 − fraction) / fraction")


class ProgressTracker:
    """Turns a suite's raw events (``{"stage", "learner", "done", "total"}``) and the fan-out's reports into
    :class:`BenchmarkProgress` and passes them to ``emit``."""

    def __init__(self, emit: Callable[[BenchmarkProgress], None] | None, learners: Sequence[str], *,
                 baselines: Literal["cached", "tuning"] = "tuning", clock: Callable[[], float] = time.monotonic):
        self.emit = emit
        self.learners = list(learners)
        self.baselines = baselines
        self.clock = clock
        self.t0 = clock()
        self.last: BenchmarkProgress | None = None

    def index(self, learner: str) -> int:
        """0-based position of ``learner`` (appended when new)."""
        if learner not in self.learners:
            self.learners.append(learner)
        return self.learners.index(learner)

    def report(self, phase: Literal["tune", "score"], learner: str | None, done: int | None, total: int | None,
               fraction: float) -> BenchmarkProgress:
        """Emit a progress event at ``fraction`` of the whole run."""
        elapsed = self.clock() - self.t0
        f = min(max(float(fraction), 0.0), 1.0)
        remaining = elapsed * (1.0 - f) / f if f > 0 else None
        idx = self.index(learner) if learner is not None else 0
        event = BenchmarkProgress(phase=phase, baselines=self.baselines, learner=learner, learner_index=idx + 1,
                                  learners=max(len(self.learners), 1), episode=done, total=total, fraction=f,
                                  elapsed=elapsed, remaining=remaining)
        self.last = event
        if self.emit is not None:
            self.emit(event)
        return event

    def on_suite_event(self, event: dict[str, Any]) -> None:
        """A raw event of ``run_suite``'s runners: learner i's unit is split into tuning and scoring."""
        stage = "tune" if event.get("stage") == "tune" else "score"
        learner = str(event.get("learner") or "")
        done, total = event.get("done"), event.get("total")
        u = float(done) / float(total) if isinstance(done, int) and isinstance(total, int) and total > 0 else 0.0
        if self.baselines == "tuning":
            u = TUNE_SHARE * u if stage == "tune" else TUNE_SHARE + (1 - TUNE_SHARE) * u
        i = self.index(learner)
        self.report(stage, learner, done, total, (i + u) / max(len(self.learners), 1))


def within(emit: Callable[[BenchmarkProgress], None] | None, lo: float, hi: float,
           clock: Callable[[], float] = time.monotonic) -> Callable[[BenchmarkProgress], None] | None:
    """A progress callback for one part of a longer run: it maps the part's fraction f to lo + (hi − lo) f of the
    whole and measures elapsed / remaining from its own creation (the start of the whole run)."""
    if emit is None:
        return None
    t0 = clock()

    def part(event: BenchmarkProgress) -> None:
        f = lo + (hi - lo) * float(event.fraction or 0.0)
        elapsed = clock() - t0
        emit(event.model_copy(update={"fraction": f, "elapsed": elapsed,
                                      "remaining": elapsed * (1.0 - f) / f if f > 0 else None}))

    return part
