"""The typed values that cross between the service and the workers, and the interface the service depends on.

The service hands the workers a :class:`~discovery.spec.DiscoverySpec` (validated once, at the API edge) or a
benchmark request; the workers answer every poll with a :class:`JobState` whose ``progress`` is a
:class:`~workers.progress.JobProgress` (a discovery job: the engine's :class:`~discovery.results.ProgressEvent`,
a sweep's counts, the workers' notes) or a :class:`~discovery.benchmarks.progress.BenchmarkProgress`, and whose
``result`` is a :class:`~workers.progress.JobResult` or a :class:`~discovery.benchmarks.suite.BenchmarkReport`.
:class:`Workers` is what the dispatcher calls: ``workers.ray_jobs`` implements it with Ray, tests with a stand-in.
See docs/architecture.md, "Contracts".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from discovery.benchmarks.cache import BaselineSet
from discovery.benchmarks.progress import BenchmarkProgress
from discovery.benchmarks.report import BenchmarkReport
from discovery.inference.fit import InferenceResult
from discovery.inference.job import InferenceSpec
from discovery.results import DiscoveryResult, ProgressEvent
from discovery.spec import DiscoverySpec
from rules.base import CoefficientRule
from workers.progress import JobProgress, JobResult, TrialRecord

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["discovery", "sweep", "benchmark", "inference"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

#: ``discovery.router.discover``'s signature: (spec, progress, checkpoint_dir, should_stop) → DiscoveryResult
DiscoverFn = Callable[..., DiscoveryResult]
#: ``discovery.benchmarks.registry.run_suite``'s signature: (suite, rule, *, tiny, seed, progress) → report
SuiteFn = Callable[..., BenchmarkReport]
#: what the engine's progress callback receives
OnProgress = Callable[[ProgressEvent], None]


class WorkerInfo(BaseModel):
    """The process running a job: its pid and Ray node (hex id)."""

    pid: int
    node_id: str | None = None


class TrialResources(BaseModel):
    """What each trial of a sweep asks Ray Tune for."""

    cpu: float
    gpu: float = 0.0


class DiscoveryTask(BaseModel):
    """A discovery job as its actor receives it: the spec, where it checkpoints, a sweep's trial budget."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: DiscoverySpec
    checkpoint_dir: str | None = None
    trial_resources: TrialResources | None = None
    max_trial_failures: int = 0
    engine: DiscoverFn | None = None          # a stand-in for discovery.router.discover (tests, experiments)


class BenchmarkTask(BaseModel):
    """A benchmark job as its actor receives it: the suite, the rule's text (None: baselines only), the size,
    the seed, the device, the suite's cached baselines (None: tune them first) and a layered rule's full θ."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    suite: str
    expression: str | None = None
    tiny: bool = False
    seed: int = 0
    device: str | None = None
    baselines: BaselineSet | None = None
    engine: SuiteFn | None = None             # a stand-in for run_suite (tests)
    #: a stored layered rule's θ (profile slopes ``F2~slope`` or per-layer ``F2@ℓ``; docs/transfer.md): the
    #: expression holds only its shared projection, and the suite runs this θ instead
    layered: dict[str, float] | None = None

    def rule(self) -> CoefficientRule | None:
        """The rule of ``expression`` (recurrent or feed-forward, both parsed by a whitelist), None for none; with
        ``layered``, the ``LayeredRule`` of the expression's terms and that θ."""
        if self.expression is None or not self.expression.strip():
            return None
        from rules.recurrent import parse_rule_text

        rule = parse_rule_text(self.expression)
        if not self.layered:
            return rule
        from discovery.transfer.layered import LayeredRule

        return LayeredRule(list(rule.coefficients), self.layered, name=getattr(rule, "name", None))


class InferenceTask(BaseModel):
    """An inference job as its actor receives it: the spec, whose recording names its folder and checksum
    (docs/inference.md)."""

    spec: InferenceSpec


class Outcome(BaseModel):
    """How an actor's ``run()`` ended (it never raises): the status, the result (also a cancelled sweep's partial
    table), a one-line error and the traceback tail for the server log."""

    status: JobStatus
    result: JobResult | BenchmarkReport | InferenceResult | None = None
    error: str | None = None
    detail: str | None = None
    trials: list[TrialRecord] = Field(default_factory=list)   # a failed or cancelled sweep's table


class ActorState(BaseModel):
    """An actor's answer to ``state()``: its phase, latest progress, cancel flag, times and process."""

    phase: str
    progress: JobProgress | BenchmarkProgress | None = None
    events: int = 0
    cancel_requested: bool = False
    created_at: float
    started_at: float | None = None
    worker: WorkerInfo


class JobState(BaseModel):
    """What a poll knows about a job: status, latest progress, the result once it ended, a one-line error and its
    detail (server log only), the attempt (1 + Ray's restarts of its actor) and the worker process."""

    status: JobStatus
    progress: JobProgress | BenchmarkProgress | None = None
    result: JobResult | BenchmarkReport | InferenceResult | None = None
    error: str | None = None
    detail: str | None = None
    attempt: int = 1
    worker: WorkerInfo | None = None
    trials: list[TrialRecord] = Field(default_factory=list)   # a failed or cancelled sweep's table

    @property
    def done(self) -> bool:
        """True once the status is terminal (succeeded, failed or cancelled)."""
        return self.status in TERMINAL


@runtime_checkable
class Workers(Protocol):
    """What the dispatcher needs from the workers; ``workers.ray_jobs`` (the module) implements it with Ray.
    A handle is opaque to the caller: it only hands it back to :meth:`poll` and :meth:`cancel`."""

    def ensure_ray(self) -> str:
        """Start or join Ray; its address."""
        ...

    def submit_discovery(self, job_id: int | str, spec: DiscoverySpec, checkpoint_dir: Path | None = None, *,
                         max_retries: int = 0) -> object:
        """Start a discovery job (a sweep when ``spec.sweep`` is set); its handle at once."""
        ...

    def submit_benchmark(self, bench_id: int | str, suite: str, expression: str | None, *, tiny: bool = False,
                         seed: int = 0, max_retries: int = 0, baselines: BaselineSet | None = None,
                         layered: dict[str, float] | None = None) -> object:
        """Start a benchmark of ``expression`` (None: the baselines; ``layered``: its layered θ) on ``suite``; its
        handle at once."""
        ...

    def poll(self, handle: object) -> JobState:
        """The job's state now (never blocks for long)."""
        ...

    def cancel(self, handle: object) -> None:
        """Ask the job to stop (idempotent)."""
        ...


@runtime_checkable
class InferenceWorkers(Protocol):
    """Workers that also run inference jobs (``workers.ray_jobs`` does; a stand-in without it fails them)."""

    def submit_inference(self, job_id: int | str, spec: InferenceSpec, *, max_retries: int = 0) -> object:
        """Start the inference of the rule behind ``spec.recording``; its handle at once."""
        ...
