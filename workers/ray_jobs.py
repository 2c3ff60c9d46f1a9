"""The workers' public API: submit discovery and benchmark jobs to Ray, poll them, cancel them.

A discovery job meta-learns the coefficients θ of a plasticity rule ΔW_ℓ = Σ_r θ_r F^r_ℓ (docs/science.md) with
``discovery.discover``; a spec with a non-empty ``sweep`` runs as Ray Tune trials over the grid of seeds,
meta learning rates η_meta and L1 weights λ, and the trial with the best held-out accuracy gives the job's
rule. A benchmark job scores a rule expression (or the baselines alone) with ``discovery.benchmarks.registry.run_suite``.

Every job is one Ray actor (:class:`workers.actors.JobActor`) with the spec's CPUs and GPUs (a sweep's
coordinating actor takes none; its trials take them). The caller keeps a :class:`JobHandle` and calls
:func:`poll`, which never blocks for long: it looks at the job's result reference and at the answer to the
previous ``state()`` call with ``ray.wait(..., timeout=0)`` and asks for a fresh state for the next poll.

    handle = submit_discovery("42", spec, checkpoint_dir)
    state = poll(handle)        # JobState(status="queued"|"running"|"succeeded"|"failed"|"cancelled", ...)
    cancel(handle)              # the engine stops at its next episode; killed after a grace period

Worker loss: ``max_retries`` (the service passes ``PLASTICITY_MAX_ATTEMPTS`` − 1) becomes the actor's Ray
``max_restarts`` and ``max_task_retries``: when the actor's process or node dies, Ray itself recreates the actor
on a live node and re-runs ``run()``, and the engine resumes from its checkpoint folder. :func:`poll` reads the
actor's restart count from Ray's actor table and reports it as ``JobState.attempt`` (1 + restarts). A sweep gives
the same budget to each trial (Tune's ``FailureConfig(max_failures)``), so a lost trial worker costs only that
trial's episodes since its last checkpoint. An engine error is returned by ``run()`` as a failed outcome and is
never retried.

Environment: ``PLASTICITY_CANCEL_GRACE_S`` (default 10) seconds between a cancel and ``ray.kill``;
``PLASTICITY_ALLOW_PENDING_RESOURCES=1`` keeps a job queued (instead of failing it at once) when the cluster
has fewer CPUs/GPUs in total than it asks for, e.g. on an autoscaling cluster.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayError

from discovery.benchmarks.cache import BaselineSet
from discovery.benchmarks.progress import BenchmarkProgress
from discovery.benchmarks.report import BenchmarkReport
from discovery.inference.job import InferenceSpec
from discovery.spec import DiscoverySpec
from workers.actors import ACTOR_CONCURRENCY, RemoteJobActor
from workers.contract import (
    TERMINAL,
    ActorState,
    BenchmarkTask,
    DiscoverFn,
    DiscoveryTask,
    InferenceTask,
    JobKind,
    JobState,
    JobStatus,
    Outcome,
    SuiteFn,
    TrialResources,
    WorkerInfo,
)
from workers.progress import JobProgress, JobResult, WorkerNote, describe_ray_error, job_progress
from workers.runtime import ensure_ray

__all__ = [
    "TERMINAL",
    "JobHandle",
    "JobState",
    "cancel",
    "ensure_ray",
    "poll",
    "spec_resources",
    "submit_benchmark",
    "submit_discovery",
    "submit_inference",
    "wait",
]

log = logging.getLogger(__name__)

DEFAULT_CANCEL_GRACE_S = 10.0


@dataclass
class JobHandle:
    """The caller's grip on a submitted job: its actor, the reference to the actor's ``run()`` and what
    :func:`poll` has learned so far. Keep it in memory (e.g. a dict by job id); it is cheap.

    It pickles with Ray's serializer while Ray is up (the lock and the cancel timer stay behind); an actor
    lives as long as the process that submitted it, so a handle is no use after a restart of the service.
    """

    job_id: str
    kind: JobKind
    task: DiscoveryTask | BenchmarkTask | InferenceTask
    actor_options: dict[str, float | int]
    max_retries: int = 0
    attempt: int = 1
    submitted_at: float = field(default_factory=time.time)
    actor: Any = None
    run_ref: Any = None
    cancel_requested_at: float | None = None
    cancel_grace_s: float = DEFAULT_CANCEL_GRACE_S
    infeasible: str | None = None
    _state_ref: Any = field(default=None, repr=False)
    _last_state: ActorState | None = field(default=None, repr=False)
    _seen_running: bool = field(default=False, repr=False)
    _pids: list[int] = field(default_factory=list, repr=False)
    _final: JobState | None = field(default=None, repr=False)
    _note: WorkerNote | None = field(default=None, repr=False)
    _lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)
    _timer: Any = field(default=None, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """True once :func:`poll` has seen the job end."""
        return self._final is not None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_timer"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()


# --- resources --------------------------------------------------------------------------------------------
def spec_resources(spec: DiscoverySpec) -> dict[str, float]:
    """``{"num_cpus", "num_gpus"}`` for a job of this spec.

    GPUs: ``resources.num_gpus`` when positive, else 1 when ``device == "cuda"``, else 0; ``device == "cpu"``
    asks for none. (Ray hides unrequested GPUs from an actor, so ``device="auto"`` with no GPUs runs on CPU.)
    """
    res = spec.resources
    gpus = float(res.num_gpus) if res.num_gpus > 0 else (1.0 if res.device == "cuda" else 0.0)
    if res.device == "cpu":
        gpus = 0.0
    return {"num_cpus": float(res.num_cpus), "num_gpus": gpus}


def _infeasible_reason(need: Mapping[str, float]) -> str | None:
    """Why the cluster can never give these resources (its totals are too small), or None."""
    if os.environ.get("PLASTICITY_ALLOW_PENDING_RESOURCES", "").strip() in ("1", "true", "yes"):
        return None
    try:
        total = ray.cluster_resources()
    except Exception:  # noqa: BLE001 - unknown: let the job wait
        return None
    for key, label in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
        want = float(need.get(key, 0) or 0)
        have = float(total.get(label, 0) or 0)
        if want > have:
            return f"the job asks for {want:g} {label}(s) but the Ray cluster has {have:g}"
    return None


# --- submission ---------------------------------------------------------------------------------------------
def _restart_options(max_retries: int) -> dict[str, int]:
    """Ray's own recovery for a job actor: recreate it (on any live node) up to ``max_retries`` times after its
    process or node dies, and re-run its pending ``run()`` on the new actor. Task retries are unbounded (-1) because
    the restarts bound them: while a lost node is being declared dead, each retry fails at once with "actor
    temporarily unavailable", which would use up a bounded task budget before the actor is back."""
    retries = max(0, int(max_retries))
    return {"max_restarts": retries, "max_task_retries": -1 if retries else 0}


def _launch(handle: JobHandle) -> None:
    """Create the handle's actor and start its ``run()``."""
    options = {**handle.actor_options, **_restart_options(handle.max_retries)}
    actor = RemoteJobActor.options(**options).remote(handle.job_id, handle.kind, handle.task)
    handle.actor = actor
    handle.run_ref = actor.run.remote()
    handle._state_ref = None
    handle._seen_running = False


def submit_discovery(
    job_id: str | int,
    spec: DiscoverySpec,
    checkpoint_dir: str | Path | None = None,
    *,
    max_retries: int = 0,
    engine: DiscoverFn | None = None,
) -> JobHandle:
    """Start a discovery job (a sweep when ``spec.sweep`` is not empty) and return its handle at once.

    ``checkpoint_dir``: where the engine checkpoints (and resumes from); a sweep puts Tune's files under ``tune/``
    and each trial's checkpoints under ``trials/<grid point>/`` there. ``max_retries``: how often Ray restarts a
    job whose actor died (process killed, node lost, out of memory), resuming from its checkpoints; for a sweep,
    also how often each trial is retried (a lost trial costs only that trial). ``engine``: a stand-in for
    ``discovery.router.discover`` with its signature (tests, experiments); it must pickle into the worker.
    """
    ensure_ray()
    need = spec_resources(spec)
    task = DiscoveryTask(spec=spec, engine=engine,
                         checkpoint_dir=None if checkpoint_dir is None else str(Path(checkpoint_dir).resolve()))
    options: dict[str, float | int]
    if spec.sweep.is_empty():
        kind: JobKind = "discovery"
        options = {**need, "max_concurrency": ACTOR_CONCURRENCY}
    else:
        kind = "sweep"
        task.trial_resources = TrialResources(cpu=need["num_cpus"], gpu=need["num_gpus"])
        task.max_trial_failures = max(0, int(max_retries))
        options = {"num_cpus": 0, "num_gpus": 0, "max_concurrency": ACTOR_CONCURRENCY}
    handle = JobHandle(
        job_id=str(job_id),
        kind=kind,
        task=task,
        actor_options=options,
        max_retries=max(0, int(max_retries)),
        cancel_grace_s=float(os.environ.get("PLASTICITY_CANCEL_GRACE_S", DEFAULT_CANCEL_GRACE_S)),
        infeasible=_infeasible_reason(need),
    )
    _launch(handle)
    return handle


def submit_benchmark(
    bench_id: str | int,
    suite: str,
    expression: str | None,
    tiny: bool = False,
    seed: int = 0,
    *,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    device: str | None = None,
    max_retries: int = 0,
    engine: SuiteFn | None = None,
    baselines: BaselineSet | None = None,
    layered: dict[str, float] | None = None,
) -> JobHandle:
    """Start a benchmark: the rule of ``expression`` (None: the baselines only) on ``suite`` in an actor.
    ``layered``: a stored layered rule's θ, run instead of the expression's shared projection (docs/transfer.md).

    ``baselines``: the suite's cached baselines for (suite, version, seed, tiny); the actor then scores the rule
    alone, on the same held-out episodes. Without them the baselines are tuned first as parallel Ray tasks
    (``workers.baseline_tasks``; the actor itself then holds no CPU) and come back in the result as
    ``baseline_set``. A bad expression fails the job with the parser's message. ``device``: default ``"cuda"``
    when ``num_gpus`` > 0. ``engine``: a stand-in for ``run_suite`` (tests). The suite cannot stop half-way, so a
    cancel kills the actor at once. ``max_retries``: how often Ray restarts the benchmark after its worker died (a
    suite has no checkpoints: it starts over).
    """
    ensure_ray()
    need = {"num_cpus": float(num_cpus), "num_gpus": float(num_gpus)}
    if device is None and num_gpus > 0:
        device = "cuda"
    fan_out = engine is None and baselines is None  # the tasks take the CPUs, the coordinating actor none
    task = BenchmarkTask(suite=suite, expression=expression, tiny=bool(tiny), seed=int(seed), device=device,
                         baselines=baselines, engine=engine, layered=layered)
    handle = JobHandle(
        job_id=str(bench_id),
        kind="benchmark",
        task=task,
        actor_options={**need, **({"num_cpus": 0.0} if fan_out else {}), "max_concurrency": ACTOR_CONCURRENCY},
        max_retries=max(0, int(max_retries)),
        cancel_grace_s=0.0,
        infeasible=_infeasible_reason(need),
    )
    _launch(handle)
    return handle


def submit_inference(job_id: str | int, spec: InferenceSpec, *, max_retries: int = 0,
                     num_cpus: float = 1.0) -> JobHandle:
    """Start an inference job (``discovery.inference.job.run_inference`` on the stored recording) in an actor
    with one CPU; it has no checkpoints, so a restarted actor starts over."""
    ensure_ray()
    need = {"num_cpus": float(num_cpus), "num_gpus": 0.0}
    handle = JobHandle(job_id=str(job_id), kind="inference", task=InferenceTask(spec=spec),
                       actor_options={**need, "max_concurrency": ACTOR_CONCURRENCY},
                       max_retries=max(0, int(max_retries)), cancel_grace_s=0.0, infeasible=_infeasible_reason(need))
    _launch(handle)
    return handle


# --- polling ------------------------------------------------------------------------------------------------
def _kill(handle: JobHandle) -> None:
    if handle.actor is None:
        return
    try:
        ray.kill(handle.actor, no_restart=True)
    except Exception:  # already gone, or Ray is down
        log.debug("job %s: kill failed", handle.job_id, exc_info=True)


def _finish(handle: JobHandle, state: JobState) -> JobState:
    """Record the final state, stop the cancel timer and free the actor's resources."""
    handle._final = state
    if handle._timer is not None:
        handle._timer.cancel()
        handle._timer = None
    _kill(handle)
    handle._state_ref = None
    return state


def _actor_error(exc: BaseException) -> tuple[str, str]:
    """(short reason, detail) for an actor that died or a task that Ray could not run."""
    return describe_ray_error(exc, "the job's worker")


def _actor_restarts(handle: JobHandle) -> int | None:
    """How often Ray has restarted the handle's actor (its actor table in the GCS), or None when unknown."""
    if handle.actor is None:
        return None
    try:
        from ray._private import state as ray_state  # the GCS actor table (no dashboard needed)

        info = ray_state.actors(actor_id=handle.actor._actor_id.hex())
        return int(info.get("NumRestarts", 0)) if isinstance(info, dict) else None
    except Exception:  # Ray's table is a hint; the worker's pid is the fallback
        log.debug("job %s: no actor table entry", handle.job_id, exc_info=True)
        return None


def _sync_attempt(handle: JobHandle) -> None:
    """Move ``handle.attempt`` to 1 + Ray's restarts of the actor (or count a new worker pid when Ray's table is
    unavailable), and note the retry in the progress that :func:`poll` reports."""
    restarts = _actor_restarts(handle)
    attempt = None if restarts is None else restarts + 1
    if attempt is None and handle._last_state and handle._pids:
        attempt = len(handle._pids)
    if attempt is not None and attempt > handle.attempt:
        handle.attempt = attempt
        handle._note = WorkerNote(
            retry=attempt - 1,
            previous_error="the job's worker died; Ray restarted it on a live node "
            f"(attempt {attempt} of {handle.max_retries + 1})",
        )


def _worker(handle: JobHandle) -> WorkerInfo | None:
    """The worker process last seen running the job."""
    return handle._last_state.worker if handle._last_state is not None else None


def _refresh_state(handle: JobHandle) -> None:
    """Take the answer to the last ``state()`` call if it is in; ask for the next one."""
    if handle._state_ref is not None:
        ready, _ = ray.wait([handle._state_ref], timeout=0)
        if not ready:
            return
        try:
            state: ActorState = ray.get(handle._state_ref, timeout=1)
            handle._last_state = state
            handle._seen_running = handle._seen_running or state.phase != "ready"
            if state.worker.pid not in handle._pids:
                handle._pids.append(state.worker.pid)
        except (ActorUnavailableError, GetTimeoutError):
            pass
        except RayError:
            pass  # the actor is gone; run_ref tells why
        handle._state_ref = None
    try:
        handle._state_ref = handle.actor.state.remote()
    except RayError:
        handle._state_ref = None


def _current_progress(handle: JobHandle) -> JobProgress | BenchmarkProgress | None:
    """The actor's latest progress; a discovery job's carries the workers' notes (a retry, a pending cancel)."""
    progress = handle._last_state.progress if handle._last_state is not None else None
    if handle.kind == "benchmark":
        return progress
    note = handle._note.model_dump(exclude_none=True) if handle._note is not None else {}
    if handle.cancel_requested_at is not None and progress is not None:
        note["cancel_requested"] = True
    if not note:
        return progress
    return progress.model_copy(update=note) if isinstance(progress, JobProgress) else JobProgress(**note)


def _last_history_event(result: JobResult | BenchmarkReport | None) -> JobProgress | None:
    """The run's last progress event from its result, for a job that ended before any look at its progress
    (a short job, or a resumed one that finished between two polls)."""
    if not isinstance(result, JobResult) or not result.history:
        return None
    return job_progress(result.history[-1])


def poll(handle: JobHandle, timeout: float = 0.0) -> JobState:
    """The job's state now; waits at most ``timeout`` seconds (default: not at all) for the job's end.

    queued: the actor has not started yet (waiting for a worker or for resources); running: it runs (also
    while a cancel is under way); succeeded / failed / cancelled: final, and the same answer from then on.
    """
    with handle._lock:
        if handle._final is not None:
            return handle._final
        if handle.infeasible is not None:
            return _finish(handle, JobState(status="failed", error=f"cannot be scheduled: {handle.infeasible}"))

        ready, _ = ray.wait([handle.run_ref], timeout=max(0.0, float(timeout)))
        _sync_attempt(handle)
        if ready:
            try:
                outcome: Outcome = ray.get(handle.run_ref, timeout=30)
            except RayError as exc:
                if handle.cancel_requested_at is not None:
                    return _finish(handle, _state(handle, "cancelled"))
                message, detail = _actor_error(exc)
                if isinstance(exc, RayActorError) and handle.max_retries > 0:
                    _sync_attempt(handle)
                    message += f" (gave up after {handle.attempt} attempt{'s' if handle.attempt > 1 else ''})"
                return _finish(handle, _state(handle, "failed", error=message, detail=detail))
            # one last look at the progress, so that the final state carries the last event
            try:
                handle._last_state = ray.get(handle.actor.state.remote(), timeout=2)
            except Exception:  # the outcome is what matters
                log.debug("job %s: no last state", handle.job_id, exc_info=True)
            return _finish(
                handle,
                JobState(
                    status=outcome.status,
                    progress=_current_progress(handle) or _last_history_event(outcome.result),
                    result=outcome.result,
                    error=outcome.error,
                    detail=outcome.detail,
                    attempt=handle.attempt,
                    worker=_worker(handle),
                    trials=outcome.trials,
                ),
            )

        if handle.cancel_requested_at is not None:
            waited = time.time() - handle.cancel_requested_at
            if not handle._seen_running or waited >= handle.cancel_grace_s:
                return _finish(handle, _state(handle, "cancelled"))

        _refresh_state(handle)
        status: JobStatus = "running" if handle._seen_running else "queued"
        return _state(handle, status)


def _state(handle: JobHandle, status: JobStatus, error: str | None = None, detail: str | None = None) -> JobState:
    """A JobState of the handle's current progress, attempt and worker."""
    return JobState(status=status, progress=_current_progress(handle), error=error, detail=detail,
                    attempt=handle.attempt, worker=_worker(handle))


def wait(handle: JobHandle, timeout: float | None = None, interval: float = 0.2) -> JobState:
    """Poll until the job ends (or ``timeout`` seconds pass); return the last state. Blocking: CLI and tests."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = poll(handle, timeout=interval)
        if state.done or (deadline is not None and time.monotonic() >= deadline):
            return state


def cancel(handle: JobHandle, grace_s: float | None = None) -> None:
    """Ask the job to stop: the engine sees ``should_stop()`` true and ends at its next episode.

    After ``grace_s`` seconds (default ``handle.cancel_grace_s``; 0 for benchmarks) the actor is killed, by a
    timer here and by :func:`poll` as well. A job still queued is killed at the next poll. Idempotent.
    """
    with handle._lock:
        if handle._final is not None or handle.cancel_requested_at is not None:
            return
        if grace_s is not None:
            handle.cancel_grace_s = float(grace_s)
        handle.cancel_requested_at = time.time()
        try:
            handle.actor.cancel.remote()
        except Exception:  # a dead actor needs no cancel
            log.debug("job %s: cancel call failed", handle.job_id, exc_info=True)
        timer = threading.Timer(handle.cancel_grace_s, _kill_if_unfinished, args=(handle,))
        timer.daemon = True
        handle._timer = timer
        timer.start()


def _kill_if_unfinished(handle: JobHandle) -> None:
    with handle._lock:
        if handle._final is None:
            _kill(handle)
