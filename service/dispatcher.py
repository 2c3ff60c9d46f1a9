"""The dispatcher: a background thread that hands queued work to Ray and writes what comes back to the database.

Every ``poll_seconds`` (1 s) it
1. connects to Ray once (``workers.ray_jobs.ensure_ray``; failures are reported in ``/api/health`` and retried),
2. polls every submitted job and benchmark (``workers.ray_jobs.poll``): progress into ``jobs.progress`` plus an
   event every ~10 %, and at the end the result — the rule (stored once per hash, ``service.store.upsert_rule``),
   the trials, the held-out accuracy — or the failure reason,
3. stops the Ray work of jobs the API marked ``cancelled`` (``workers.ray_jobs.cancel``),
4. submits queued jobs and benchmarks (oldest first, at most ``max_running`` at once).

Status changes are conditional SQL updates (``WHERE status IN ('queued', 'running')``), so a cancel written by a
request handler is never overwritten. Ray handles live only in this process: at start :meth:`Dispatcher.recover`
puts every job and benchmark left ``running`` back to ``queued``, and the engine resumes from its checkpoint
folder ``<data dir>/checkpoints/job-<id>``. A job requeued more than ``MAX_ATTEMPTS`` times fails with a reason.

Worker loss while the service runs is Ray's to handle: every submission asks for ``settings.max_attempts`` − 1
actor restarts (``PLASTICITY_MAX_ATTEMPTS``, default 3), so a job whose worker process or node dies is recreated
by Ray on a live node and resumes from its checkpoint (which must be on storage every node reads,
``PLASTICITY_CHECKPOINT_DIR``). Each poll compares the attempt that ``workers`` reports with the one recorded:
every new attempt adds one to ``attempts`` and writes a ``retrying`` event, and every new worker process a
``worker`` event naming its node. A failure of the engine itself is not retried.

Public text carries no tracebacks: an error is stored as one short line, and the traceback tail that the workers
send along is written to the server log only.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from discovery.spec import DiscoverySpec
from service.db import finite_json, session_scope
from service.models import (
    ACTIVE_STATUSES,
    CANCELLED,
    FAILED,
    ORIGIN_BASELINE,
    ORIGIN_DISCOVERED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    BenchmarkRun,
    BenchmarkScore,
    Job,
    Rule,
    Trial,
    utcnow,
)
from service.rulebook import benchmark_text, record_from_result
from service.settings import Settings
from service.store import add_event, link_job_rule, store_front, upsert_rule

log = logging.getLogger("plasticity.dispatcher")

#: Submissions of one job or benchmark before it is failed (restarts while it ran, lost workers).
MAX_ATTEMPTS = 5
#: Consecutive poll errors before a job is failed.
MAX_POLL_ERRORS = 5
#: Seconds between attempts to connect to Ray after a failure.
RAY_RETRY_SECONDS = 10.0
#: Keys of a progress event worth keeping in ``jobs.progress``.
PROGRESS_KEYS = (
    "phase",
    "episode",
    "total",
    "meta_loss",
    "meta_accuracy",
    "theta",
    "alignment_deg",
    "e1",
    "skipped",
    "dropped_episodes",
    "kind",
    "trials_total",
    "trials_done",
    "best_trial",
    "best_heldout_accuracy",
    "best_config",
    "retry",
    "previous_error",
    "cancel_requested",
)


@dataclass
class _Tracked:
    """A submitted job or benchmark: its Ray handle and what the dispatcher remembers about it."""

    handle: Any
    poll_errors: int = 0
    last_episode: int | None = None
    last_event_episode: int | None = None
    last_event_time: float = field(default_factory=time.monotonic)
    cancelling: bool = False
    attempt: int = 1
    worker: tuple[Any, Any] | None = None


def _short(exc: BaseException, limit: int = 500) -> str:
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".strip(": ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def public_reason(text: str, limit: int = 4000) -> str:
    """One line for public responses: the text's first line, or for a bare traceback its last line (the
    exception); never the frames."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if not lines:
        return "failed"
    first = lines[0] if not lines[0].startswith("Traceback (most recent call last)") else lines[-1]
    return first[:limit]


def _retry_kwargs(submit: Callable[..., Any], retries: int) -> dict[str, Any]:
    """``{"max_retries": retries}`` when the workers' submit function takes it (stand-ins may not)."""
    try:
        params = inspect.signature(submit).parameters
    except (TypeError, ValueError):
        return {}
    takes = "max_retries" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {"max_retries": retries} if takes else {}


class Dispatcher:
    """Moves jobs and benchmarks between the database and Ray (one thread; see the module docstring).

    Run exactly one dispatcher per database: further API replicas set ``PLASTICITY_DISPATCHER=0``.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], workers: ModuleType | Any = None):
        self.settings = settings
        self.sessions = sessions
        self._workers = workers
        self._jobs: dict[int, _Tracked] = {}
        self._benchmarks: dict[int, _Tracked] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ray_next_try = 0.0
        self.ray_state: dict[str, Any] = {"state": "not started"}
        self.last_error: str | None = None
        self.ticks = 0

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Requeue interrupted work, then start the thread."""
        self.recover()
        self._thread = threading.Thread(target=self._run, name="plasticity-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread. Ray work keeps its DB status, so the next start resubmits it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Run the next tick now (after a submission or a cancel)."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        """For ``/api/health``."""
        return {
            "enabled": True,
            "alive": self.alive,
            "ticks": self.ticks,
            "jobs": sorted(self._jobs),
            "benchmarks": sorted(self._benchmarks),
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:
                self.last_error = _short(exc)
                log.exception("dispatcher tick failed")
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    # --- workers --------------------------------------------------------------------------------------------
    def workers(self) -> Any:
        """``workers.ray_jobs`` (imported on first use), or the module given to the constructor."""
        if self._workers is None:
            self._workers = importlib.import_module("workers.ray_jobs")
        return self._workers

    def _ray_ready(self) -> bool:
        if self.ray_state.get("state") == "connected":
            return True
        now = time.monotonic()
        if now < self._ray_next_try:
            return False
        try:
            workers = self.workers()
            ensure = getattr(workers, "ensure_ray", None)
            address = ensure() if ensure is not None else None
        except Exception as exc:  # noqa: BLE001 - reported in /api/health, retried
            self._ray_next_try = now + RAY_RETRY_SECONDS
            self.ray_state = {"state": "error", "error": _short(exc)}
            log.warning("cannot start or join Ray: %s", exc)
            return False
        self.ray_state = {"state": "connected", "address": str(address) if address else None}
        return True

    # --- recovery -------------------------------------------------------------------------------------------
    def recover(self) -> None:
        """Put work left ``running`` by a previous process back to ``queued`` (it resumes from checkpoints)."""
        with session_scope(self.sessions) as s:
            requeued: set[int] = set()
            for job in s.scalars(select(Job).where(Job.status == RUNNING)).all():
                job.status = QUEUED
                requeued.add(job.id)
                add_event(
                    s,
                    "requeued",
                    "the service restarted while the job ran; resubmitting (the engine "
                    "resumes from its last checkpoint)",
                    job_id=job.id,
                )
            for job in s.scalars(select(Job).where(Job.status == QUEUED, Job.attempts > 0)).all():
                if job.id not in requeued:
                    add_event(
                        s,
                        "requeued",
                        "the service restarted before the job started; resubmitting",
                        job_id=job.id,
                    )
            for run in s.scalars(select(BenchmarkRun).where(BenchmarkRun.status == RUNNING)).all():
                run.status = QUEUED
                add_event(
                    s,
                    "requeued",
                    "the service restarted while the benchmark ran; resubmitting",
                    benchmark_id=run.id,
                )

    # --- one tick -----------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Poll, cancel and submit once."""
        self.ticks += 1
        if not self._ray_ready():
            return
        self._poll_jobs()
        self._poll_benchmarks()
        self._submit_jobs()
        self._submit_benchmarks()

    def _running(self) -> int:
        return sum(1 for t in self._jobs.values() if not t.cancelling) + len(self._benchmarks)

    # --- jobs -----------------------------------------------------------------------------------------------
    def _submit_jobs(self) -> None:
        free = self.settings.max_running - self._running()
        if free <= 0:
            return
        with session_scope(self.sessions) as s:
            queued = s.scalars(select(Job).where(Job.status == QUEUED).order_by(Job.id)).all()
            for job in queued:
                if free <= 0:
                    break
                if job.id in self._jobs:
                    continue
                if job.attempts >= MAX_ATTEMPTS:
                    self._fail_job(
                        s,
                        job.id,
                        f"gave up after {job.attempts} attempts: the job was interrupted "
                        "every time (service restarts or lost workers)",
                    )
                    continue
                try:
                    spec = DiscoverySpec.model_validate(job.spec)
                    folder = self.settings.checkpoint_dir(job.id)
                    folder.mkdir(parents=True, exist_ok=True)
                    submit = self.workers().submit_discovery
                    handle = submit(job.id, spec, folder, **_retry_kwargs(submit, self.settings.max_attempts - 1))
                except Exception as exc:
                    log.exception("job %s: submission failed", job.id)
                    self._fail_job(s, job.id, f"could not submit the job: {_short(exc)}")
                    continue
                job.attempts += 1
                self._jobs[job.id] = _Tracked(handle)
                add_event(
                    s,
                    "submitted",
                    f"submitted to Ray (attempt {job.attempts})",
                    job_id=job.id,
                    data={"checkpoint_dir": str(folder)},
                )
                free -= 1

    def _poll_jobs(self) -> None:
        self._poll_tracked(
            self._jobs, "job", self._apply_job_state, self._fail_job,
            lost="lost contact with the job's Ray worker", unrecorded="could not record the job's result",
        )

    def _poll_tracked(
        self,
        tracked_by_id: dict[int, _Tracked],
        what: str,
        apply: Callable[[int, _Tracked, Any], None],
        fail: Callable[..., None],
        *,
        lost: str,
        unrecorded: str,
    ) -> None:
        """Poll every tracked job or benchmark and apply its state; fail it (and stop tracking it) after
        MAX_POLL_ERRORS consecutive poll errors, or when its state cannot be recorded."""
        for item_id, tracked in list(tracked_by_id.items()):
            try:
                state = self.workers().poll(tracked.handle)
            except Exception as exc:  # noqa: BLE001
                tracked.poll_errors += 1
                if tracked.poll_errors >= MAX_POLL_ERRORS:
                    del tracked_by_id[item_id]
                    with session_scope(self.sessions) as s:
                        fail(s, item_id, f"{lost}: {_short(exc)}")
                continue
            tracked.poll_errors = 0
            try:
                apply(item_id, tracked, state)
            except Exception as exc:
                log.exception("%s %s: could not record its state", what, item_id)
                tracked_by_id.pop(item_id, None)
                with session_scope(self.sessions) as s:
                    fail(s, item_id, f"{unrecorded}: {_short(exc)}")

    def _apply_job_state(self, job_id: int, tracked: _Tracked, state: Any) -> None:
        status = getattr(state, "status", None)
        final = status in (SUCCEEDED, FAILED, CANCELLED)
        with session_scope(self.sessions) as s:
            job = s.get(Job, job_id)
            if job is None or job.status not in ACTIVE_STATUSES:
                # deleted or cancelled through the API: stop the Ray work, keep the DB as it is
                if not tracked.cancelling:
                    tracked.cancelling = True
                    try:
                        self.workers().cancel(tracked.handle)
                    except Exception as exc:  # noqa: BLE001
                        log.warning("job %s: cancel failed: %s", job_id, exc)
                    if job is not None:
                        add_event(s, "stopping", "stopping the Ray work of the cancelled job", job_id=job_id)
                if final:
                    del self._jobs[job_id]
                    if job is not None:
                        add_event(s, "stopped", f"the Ray work ended ({status})", job_id=job_id)
                return
            if (
                status == RUNNING
                and job.status == QUEUED
                and self._transition(s, job_id, RUNNING, started_at=job.started_at or utcnow())
            ):
                add_event(s, "started", "meta-training started", job_id=job_id)
            self._record_attempts(s, Job, job_id, tracked, state, job_id=job_id)
            progress = getattr(state, "progress", None)
            if progress:
                self._record_progress(s, job, tracked, progress)
            if status == SUCCEEDED:
                del self._jobs[job_id]
                self._finish_job(s, job, getattr(state, "result", None) or {})
            elif status == FAILED:
                del self._jobs[job_id]
                error = getattr(state, "error", None) or "the job failed without a message"
                _log_failure("job", job_id, error, getattr(state, "detail", None))
                self._fail_job(s, job_id, error)
            elif status == CANCELLED:
                del self._jobs[job_id]
                if self._transition(s, job_id, CANCELLED, finished_at=utcnow()):
                    add_event(s, "cancelled", "the Ray work was cancelled", job_id=job_id)

    def _record_attempts(
        self, s: Session, model: type, row_id: int, tracked: _Tracked, state: Any, **owner: int
    ) -> None:
        """Count the attempts Ray made since the last poll (``attempts`` += new ones, a ``retrying`` event each)
        and write a ``worker`` event when a new worker process (pid, node) runs the job or benchmark."""
        attempt = getattr(state, "attempt", None)
        if isinstance(attempt, int) and attempt > tracked.attempt:
            new = attempt - tracked.attempt
            s.execute(update(model).where(model.id == row_id).values(attempts=model.attempts + new))
            previous = tracked.worker
            for n in range(tracked.attempt + 1, attempt + 1):
                add_event(
                    s,
                    "retrying",
                    f"the worker was lost; Ray restarted it on a live node (attempt {n} of "
                    f"{self.settings.max_attempts} in this submission); it resumes from its last checkpoint",
                    data={"attempt": n, "max_attempts": self.settings.max_attempts,
                          "previous_node_id": previous[1] if previous else None,
                          "previous_pid": previous[0] if previous else None},
                    **owner,
                )
            tracked.attempt = attempt
        worker = getattr(state, "worker", None)
        if isinstance(worker, dict) and worker.get("pid") is not None:
            key = (worker.get("pid"), worker.get("node_id"))
            if key != tracked.worker:
                tracked.worker = key
                node = str(key[1] or "?")
                add_event(
                    s,
                    "worker",
                    f"running on Ray node {node[:12]} (pid {key[0]}, attempt {tracked.attempt})",
                    data={"pid": key[0], "node_id": key[1], "attempt": tracked.attempt},
                    **owner,
                )

    def _record_progress(self, s: Session, job: Job, tracked: _Tracked, progress: dict[str, Any]) -> None:
        clean = finite_json({k: progress[k] for k in PROGRESS_KEYS if k in progress})
        if clean == job.progress:
            return
        s.execute(update(Job).where(Job.id == job.id, Job.status.in_(ACTIVE_STATUSES)).values(progress=clean))
        episode, total = clean.get("episode"), clean.get("total")
        if not isinstance(episode, int):
            return
        step = max(1, (total or 10) // 10)
        last = tracked.last_event_episode
        if last is None or episode - last >= step or time.monotonic() - tracked.last_event_time > 30:
            tracked.last_event_episode = episode
            tracked.last_event_time = time.monotonic()
            add_event(
                s,
                "progress",
                f"episode {episode}/{total}",
                job_id=job.id,
                data={k: clean.get(k) for k in ("episode", "total", "meta_accuracy", "meta_loss", "theta")},
            )

    def _transition(self, s: Session, job_id: int, status: str, **values: Any) -> bool:
        """Set the status of an active job; False when it is no longer active (e.g. cancelled meanwhile)."""
        result = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(ACTIVE_STATUSES))
            .values(status=status, updated_at=utcnow(), **values)
        )
        s.expire_all()
        return bool(result.rowcount)

    def _fail_job(self, s: Session, job_id: int, error: str, data: dict[str, Any] | None = None) -> None:
        error = public_reason(error)
        if self._transition(s, job_id, FAILED, error=error, finished_at=utcnow()):
            add_event(s, "failed", error, job_id=job_id, data=data)

    def _finish_job(self, s: Session, job: Job, result: dict[str, Any]) -> None:
        """Store the trials and the rule of a successful job, then mark it succeeded."""
        trials = result.get("trials") or []
        summary = {k: v for k, v in result.items() if k != "trials"}
        spec = job.spec
        if trials:
            for i, trial in enumerate(trials):
                s.add(
                    Trial(
                        job_id=job.id,
                        index=int(trial.get("index", i)),
                        status=str(trial.get("status") or SUCCEEDED)[:16],
                        config=finite_json(trial.get("config")),
                        heldout_accuracy=_float(trial.get("heldout_accuracy")),
                        heldout_ci95=_float(trial.get("heldout_ci95")),
                        rule=finite_json(trial.get("rule")),
                        metrics=finite_json(
                            {
                                k: v
                                for k, v in trial.items()
                                if k
                                not in (
                                    "index",
                                    "status",
                                    "config",
                                    "rule",
                                    "heldout_accuracy",
                                    "heldout_ci95",
                                )
                            }
                        ),
                    )
                )
        else:
            meta = spec.get("meta") or {}
            s.add(
                Trial(
                    job_id=job.id,
                    index=0,
                    status=SUCCEEDED,
                    config={"seed": meta.get("seed"), "lr": meta.get("lr"), "l1": meta.get("l1")},
                    heldout_accuracy=_float(result.get("heldout_accuracy")),
                    heldout_ci95=_float(result.get("heldout_ci95")),
                    rule=finite_json(result.get("rule")),
                    metrics=finite_json(
                        {
                            k: result.get(k)
                            for k in (
                                "diverged_episodes",
                                "skipped_steps",
                                "wall_time_s",
                                "device",
                                "heldout_episodes",
                            )
                        }
                    ),
                )
            )
        rule_row: Rule | None = None
        rule_dict = result.get("rule")
        front = result.get("front") or []
        if front:   # open discovery: every rule of the front is stored (the entries gain their rule_id)
            ids = store_front(s, job, front, name=_rule_name(job), spec=spec, seed=(spec.get("meta") or {}).get("seed"))
            add_event(s, "front", f"stored the front: rules {', '.join(map(str, ids))}", job_id=job.id,
                      data={"rule_ids": ids})
        if rule_dict:
            record = record_from_result(rule_dict)
            best = result.get("best_trial")
            seed = (
                ((trials[best] or {}).get("config") or {}).get("seed")
                if trials and isinstance(best, int) and 0 <= best < len(trials)
                else None
            )
            seed = seed if seed is not None else (spec.get("meta") or {}).get("seed")
            rule_row, created = upsert_rule(
                s,
                record,
                name=_rule_name(job),
                origin=ORIGIN_DISCOVERED,
                spec=spec,
                seed=seed,
                job_id=job.id,
                provenance={
                    "job_id": job.id,
                    "goal": job.goal,
                    "best_trial": best,
                    "heldout_accuracy": result.get("heldout_accuracy"),
                    "heldout_ci95": result.get("heldout_ci95"),
                    "heldout_episodes": result.get("heldout_episodes"),
                    "wall_time_s": result.get("wall_time_s"),
                    "device": result.get("device"),
                    "coefficients_raw": rule_dict.get("coefficients_raw"),
                },
            )
            link_job_rule(s, job, rule_row)
            add_event(
                s,
                "rule",
                ("stored rule" if created else "the rule was already stored as rule") + f" {rule_row.id}",
                job_id=job.id,
                data={"rule_id": rule_row.id, "hash": rule_row.hash},
            )
        if self._transition(
            s, job.id, SUCCEEDED, result=finite_json(summary), finished_at=utcnow(), error=None
        ):
            acc = result.get("heldout_accuracy")
            add_event(
                s,
                "succeeded",
                "finished" + (f": held-out accuracy {acc:.3f}" if isinstance(acc, float) else ""),
                job_id=job.id,
            )
            if rule_row is not None:
                for suite in self.settings.auto_benchmark_suites:
                    run = BenchmarkRun(
                        suite=suite,
                        rule_id=rule_row.id,
                        owner=job.owner,
                        tiny=self.settings.benchmark_tiny,
                        seed=0,
                        status=QUEUED,
                    )
                    s.add(run)
                    s.flush()
                    add_event(
                        s,
                        "queued",
                        f"automatic benchmark of rule {rule_row.id} from job {job.id}",
                        benchmark_id=run.id,
                    )

    # --- benchmarks -----------------------------------------------------------------------------------------
    def _submit_benchmarks(self) -> None:
        free = self.settings.max_running - self._running()
        if free <= 0:
            return
        with session_scope(self.sessions) as s:
            queued = s.scalars(
                select(BenchmarkRun).where(BenchmarkRun.status == QUEUED).order_by(BenchmarkRun.id)
            ).all()
            for run in queued:
                if free <= 0:
                    break
                if run.id in self._benchmarks:
                    continue
                if run.attempts >= MAX_ATTEMPTS:
                    self._fail_benchmark(s, run.id, f"gave up after {run.attempts} attempts")
                    continue
                expression = run.expression
                if run.rule_id is not None:
                    rule = s.get(Rule, run.rule_id)
                    if rule is not None:  # a recurrent rule travels as its canonical text
                        expression = benchmark_text(rule.canonical, rule.expression)
                try:
                    submit = self.workers().submit_benchmark
                    handle = submit(
                        run.id, run.suite, expression, tiny=run.tiny, seed=run.seed,
                        **_retry_kwargs(submit, self.settings.max_attempts - 1),
                    )
                except Exception as exc:
                    log.exception("benchmark %s: submission failed", run.id)
                    self._fail_benchmark(s, run.id, f"could not submit the benchmark: {_short(exc)}")
                    continue
                run.attempts += 1
                self._benchmarks[run.id] = _Tracked(handle)
                add_event(s, "submitted", f"submitted to Ray (attempt {run.attempts})", benchmark_id=run.id)
                free -= 1

    def _bench_transition(self, s: Session, run_id: int, status: str, **values: Any) -> bool:
        result = s.execute(
            update(BenchmarkRun)
            .where(BenchmarkRun.id == run_id, BenchmarkRun.status.in_(ACTIVE_STATUSES))
            .values(status=status, updated_at=utcnow(), **values)
        )
        s.expire_all()
        return bool(result.rowcount)

    def _fail_benchmark(
        self, s: Session, run_id: int, error: str, data: dict[str, Any] | None = None
    ) -> None:
        error = public_reason(error)
        if self._bench_transition(s, run_id, FAILED, error=error, finished_at=utcnow()):
            add_event(s, "failed", error, benchmark_id=run_id, data=data)

    def _poll_benchmarks(self) -> None:
        self._poll_tracked(
            self._benchmarks, "benchmark", self._apply_benchmark_state, self._fail_benchmark,
            lost="lost contact with the benchmark's worker", unrecorded="could not record the result",
        )

    def _apply_benchmark_state(self, run_id: int, tracked: _Tracked, state: Any) -> None:
        status = getattr(state, "status", None)
        final = status in (SUCCEEDED, FAILED, CANCELLED)
        with session_scope(self.sessions) as s:
            run = s.get(BenchmarkRun, run_id)
            if run is None or run.status not in ACTIVE_STATUSES:
                if not tracked.cancelling:
                    tracked.cancelling = True
                    try:
                        self.workers().cancel(tracked.handle)
                    except Exception as exc:  # noqa: BLE001
                        log.warning("benchmark %s: cancel failed: %s", run_id, exc)
                if final:
                    del self._benchmarks[run_id]
                return
            self._record_attempts(s, BenchmarkRun, run_id, tracked, state, benchmark_id=run_id)
            progress = getattr(state, "progress", None)
            if progress and finite_json(progress) != run.progress:
                run.progress = finite_json(progress)
            if status == RUNNING and run.status == QUEUED:
                if self._bench_transition(s, run_id, RUNNING, started_at=utcnow()):
                    add_event(s, "started", "benchmark started", benchmark_id=run_id)
            elif status == SUCCEEDED:
                del self._benchmarks[run_id]
                self._finish_benchmark(s, run, getattr(state, "result", None) or {})
            elif status == FAILED:
                del self._benchmarks[run_id]
                error = getattr(state, "error", None) or "the benchmark failed"
                _log_failure("benchmark", run_id, error, getattr(state, "detail", None))
                self._fail_benchmark(s, run_id, error)
            elif status == CANCELLED:
                del self._benchmarks[run_id]
                if self._bench_transition(s, run_id, CANCELLED, finished_at=utcnow()):
                    add_event(s, "cancelled", "the benchmark was cancelled", benchmark_id=run_id)

    def _finish_benchmark(self, s: Session, run: BenchmarkRun, result: dict[str, Any]) -> None:
        entries = result.get("entries") or []
        rule = s.get(Rule, run.rule_id) if run.rule_id is not None else None
        rule_index = rule_entry_index(entries, rule.name if rule is not None else None) if rule else None
        for i, entry in enumerate(entries):
            is_rule = i == rule_index
            s.add(
                BenchmarkScore(
                    run_id=run.id,
                    suite=run.suite,
                    learner=str(entry.get("learner") or entry.get("name") or f"#{i}")[:200],
                    origin=(rule.origin if (is_rule and rule is not None) else ORIGIN_BASELINE),
                    rule_id=rule.id if (is_rule and rule is not None) else None,
                    score=_float(entry.get("score")),
                    ci95=ci_halfwidth(entry),
                    locality=(str(entry["locality"])[:32] if entry.get("locality") else None),
                    cost_per_sample_ms=_float(entry.get("cost_per_sample_ms", entry.get("cost"))),
                    metrics=finite_json(entry.get("metrics")),
                )
            )
        version = result.get("version")
        if self._bench_transition(
            s,
            run.id,
            SUCCEEDED,
            result=finite_json(result),
            finished_at=utcnow(),
            suite_version=str(version)[:32] if version is not None else None,
            error=None,
        ):
            add_event(s, "succeeded", f"{len(entries)} learners scored", benchmark_id=run.id)


def _log_failure(what: str, item_id: int, error: str, detail: str | None) -> None:
    """The full story of a failure (the worker's traceback tail) for the server log only."""
    if detail:
        log.warning("%s %s failed: %s\n%s", what, item_id, error, detail)
    else:
        log.warning("%s %s failed: %s", what, item_id, error)


def rule_entry_index(entries: list[dict[str, Any]], rule_name: str | None) -> int | None:
    """Which suite entry is the rule under test (the others are baselines).

    An entry marked ``is_rule``/``kind == "rule"``/``origin == "rule"`` wins; else one whose learner is named
    ``rule``, the rule's name, or starts with ``rule``.
    """
    for i, e in enumerate(entries):
        if e.get("is_rule") or e.get("kind") == "rule" or e.get("origin") in ("rule", "candidate"):
            return i
    names = {"rule", "candidate", "rule under test"} | ({rule_name.lower()} if rule_name else set())
    for i, e in enumerate(entries):
        learner = str(e.get("learner") or e.get("name") or "").lower()
        if learner in names:
            return i
    for i, e in enumerate(entries):
        if str(e.get("learner") or "").lower().startswith("rule"):
            return i
    return None


def ci_halfwidth(entry: dict[str, Any]) -> float | None:
    """The 95 % CI half-width of a suite entry: ``ci95_halfwidth``, or from ``ci95`` as [lo, hi] or a number."""
    if entry.get("ci95_halfwidth") is not None:
        return _float(entry["ci95_halfwidth"])
    ci = entry.get("ci95", entry.get("ci"))
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo, hi = _float(ci[0]), _float(ci[1])
        return None if lo is None or hi is None else (hi - lo) / 2
    return _float(ci)


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _rule_name(job: Job) -> str:
    net = (job.spec or {}).get("network") or {}
    task = (job.spec or {}).get("task") or {}
    widths = net.get("widths") or []
    return (
        f"job {job.id} · {net.get('feedback', '?')} · {task.get('dataset', '?')} · "
        f"depth {max(len(widths) - 1, 0)}"
    )
