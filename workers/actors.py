"""The Ray actor that hosts one job: a discovery run, a sweep (Ray Tune driver) or a benchmark suite.

A discovery job meta-learns θ in ΔW_ℓ = Σ_r θ_r F^r_ℓ (docs/science.md) by calling ``discovery.discover``; a
benchmark scores a rule (or only the baselines) with ``discovery.benchmarks.registry.run_suite``. The actor is threaded
(``max_concurrency`` > 1): :meth:`JobActor.run` blocks one thread with the job while :meth:`JobActor.state`
and :meth:`JobActor.cancel` answer from the others. ``run`` never raises for an engine error: it returns an
outcome dict ``{"status", "result", "error", "detail"}`` so that the caller gets a short message and a
traceback tail instead of Ray's wrapped exception. Cancelling sets a flag that the engine reads through
``should_stop`` (it stops at the next episode); the caller kills the actor if that takes too long.

Recovery: a job's actor is created with Ray's ``max_restarts`` / ``max_task_retries`` (``workers.ray_jobs``).
When its process or its node dies, Ray recreates the actor on any live node with the resources and re-runs
``run()``, and the engine resumes from the checkpoint folder (which every node must be able to read). An engine
error is not a worker death: ``run`` returns it as a failed outcome, so Ray never retries it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import ray

from discovery.benchmarks.progress import BenchmarkProgress, ProgressTracker
from discovery.benchmarks.report import BenchmarkReport
from discovery.inference.fit import InferenceResult
from workers.contract import (
    ActorState,
    BenchmarkTask,
    DiscoverFn,
    DiscoveryTask,
    InferenceTask,
    JobKind,
    Outcome,
    WorkerInfo,
)
from workers.progress import JobProgress, JobResult, job_progress, short_error, traceback_tail

#: threads of a job actor: the job, state() and cancel() calls, and slack
ACTOR_CONCURRENCY = 4


def default_engine() -> DiscoverFn:
    """``discovery.router.discover``, the engine's one entry point."""
    from discovery.router import discover

    return discover


def _node_id() -> str | None:
    """The Ray node this process runs on (hex id), or None outside Ray."""
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return None


class JobActor:
    """Runs one job in the actor's process and keeps its latest progress.

    ``kind`` is ``"discovery"``, ``"sweep"`` (both with a :class:`~workers.contract.DiscoveryTask`) or
    ``"benchmark"`` (a :class:`~workers.contract.BenchmarkTask`).
    """

    def __init__(self, job_id: str, kind: JobKind, task: DiscoveryTask | BenchmarkTask | InferenceTask):
        self.job_id = job_id
        self.kind = kind
        self.task = task
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._progress: JobProgress | BenchmarkProgress | None = None
        self._resumed: dict[str, object] = {}   # the engine's "resumed …" event of this attempt (WorkerNote fields)
        self._events = 0
        self._phase = "ready"
        self._created = time.time()
        self._started: float | None = None

    # --- called by the owner -------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Run the job to its end; its :class:`~workers.contract.Outcome` (never raises)."""
        with self._lock:
            self._phase = "running"
            self._started = time.time()
        try:
            result = self._run()
            outcome = Outcome(status="cancelled" if self._stop.is_set() else "succeeded", result=result)
        except Exception as exc:  # noqa: BLE001 - every engine error becomes a failed outcome
            extra = getattr(exc, "detail", None)
            partial = getattr(exc, "result", None)  # SweepFailed carries the trials table
            outcome = Outcome(
                status="cancelled" if self._stop.is_set() else "failed",
                error=None if self._stop.is_set() else short_error(exc),
                detail=extra if isinstance(extra, str) and extra else traceback_tail(exc),
                trials=partial.get("trials") or [] if isinstance(partial, dict) else [],
            )
        with self._lock:
            self._phase = outcome.status
        return outcome

    def state(self) -> ActorState:
        """The latest progress and where the job is: phase, cancel flag, times, process."""
        with self._lock:
            return ActorState(phase=self._phase, progress=self._progress, events=self._events,
                              cancel_requested=self._stop.is_set(), created_at=self._created,
                              started_at=self._started, worker=WorkerInfo(pid=os.getpid(), node_id=_node_id()))

    def cancel(self) -> bool:
        """Ask the job to stop at its next episode; return True."""
        self._stop.set()
        return True

    def ping(self) -> str:
        """Liveness check."""
        return self.job_id

    # --- internals -----------------------------------------------------------------------------------
    def _should_stop(self) -> bool:
        return self._stop.is_set()

    def _set_progress(self, progress: JobProgress | BenchmarkProgress) -> None:
        with self._lock:
            self._progress = progress
            self._events += 1

    def _on_engine_event(self, event: object) -> None:
        """The engine's ProgressEvent of one meta-step, kept as the job's progress. The event that says where a
        resumed attempt started (phase "resumed stage 3 (fit 2 terms) at episode 340") is also kept as a note on
        every later progress: the next meta-step follows it within milliseconds, so a poll would miss it."""
        phase = getattr(event, "phase", None)
        if isinstance(phase, str) and phase.startswith("resumed"):
            self._resumed = {"resumed": phase, "resumed_from_episode": getattr(event, "episode", None)}
        self._set_progress(job_progress(event, kind=self.kind, **self._resumed))

    def _run(self) -> JobResult | BenchmarkReport | InferenceResult:
        if isinstance(self.task, InferenceTask):   # docs/inference.md
            from discovery.inference.job import run_inference

            return run_inference(self.task.spec)
        if isinstance(self.task, BenchmarkTask):
            return self._run_benchmark(self.task)
        if self.kind == "sweep":
            from workers.sweep import run_sweep

            return run_sweep(self.task, job_id=self.job_id, should_stop=self._should_stop,
                             on_progress=self._set_progress)
        return self._run_discovery(self.task)

    def _run_discovery(self, task: DiscoveryTask) -> JobResult:
        engine = task.engine or default_engine()
        checkpoint_dir = None
        if task.checkpoint_dir is not None:
            checkpoint_dir = Path(task.checkpoint_dir)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        result = engine(task.spec, progress=self._on_engine_event, checkpoint_dir=checkpoint_dir,
                        should_stop=self._should_stop)
        return JobResult.model_validate(result, from_attributes=True)

    def _run_benchmark(self, task: BenchmarkTask) -> BenchmarkReport:
        rule = task.rule()
        if task.engine is None:  # cached baselines, or a first tuning fanned out as Ray tasks
            from workers.baseline_tasks import run_benchmark_job

            return run_benchmark_job(task, rule, self._set_progress, self._should_stop)
        tracker = ProgressTracker(self._set_progress, [])
        return task.engine(task.suite, rule, tiny=task.tiny, seed=task.seed, progress=tracker.on_suite_event)


#: the Ray actor class; give resources and the restart budget with ``.options(num_cpus=…, num_gpus=…,
#: max_restarts=…, max_task_retries=…)`` at submission (``workers.ray_jobs``); no restarts by default
RemoteJobActor = ray.remote(max_restarts=0, max_task_retries=0)(JobActor)
