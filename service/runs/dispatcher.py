"""The dispatcher: a background thread that hands queued work to Ray and writes what comes back to the database.

Every ``poll_seconds`` (1 s) it
1. connects to Ray once (``workers.ray_jobs.ensure_ray``; failures are reported in ``/api/health`` and retried),
2. polls every submitted job and benchmark (``workers.ray_jobs.poll``): progress into ``jobs.progress`` plus an
   event every ~10 %, and at the end the result — the rule (stored once per hash, ``service.db.repositories.store.upsert_rule``),
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from discovery.results import jsonable
from discovery.spec import DiscoverySpec
from service.db.models import (
    ACTIVE_STATUSES,
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    BenchmarkRun,
    Job,
    Rule,
    utcnow,
)
from service.db.repositories import baselines as benchmark_cache
from service.db.repositories.store import add_event
from service.db.session import session_scope
from service.rulebook import benchmark_text
from service.runs.recording import queue_benchmarks, record_benchmark_result, record_job_result
from service.settings import Settings
from workers.progress import JobProgress

log = logging.getLogger("plasticity.dispatcher")

#: Submissions of one job or benchmark before it is failed (restarts while it ran, lost workers).
MAX_ATTEMPTS = 5
#: Consecutive poll errors before a job is failed.
MAX_POLL_ERRORS = 5
#: Seconds between attempts to connect to Ray after a failure.
RAY_RETRY_SECONDS = 10.0
#: The final statuses a worker reports.
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED)


@dataclass(frozen=True)
class Flow:
    """What differs between the two kinds of tracked work; the state machine that moves them is one
    (:meth:`Dispatcher._submit`, :meth:`Dispatcher._apply_state`): the table, the event owner and the words."""

    what: str                             # "job" | "benchmark"
    model: type[Job] | type[BenchmarkRun]
    owner: str                            # the add_event keyword naming the row
    started: str
    cancelled: str
    failed: str
    lost: str
    unrecorded: str


JOB_FLOW = Flow("job", Job, "job_id", started="meta-training started", cancelled="the Ray work was cancelled",
                failed="the job failed without a message", lost="lost contact with the job's Ray worker",
                unrecorded="could not record the job's result")
BENCHMARK_FLOW = Flow("benchmark", BenchmarkRun, "benchmark_id", started="benchmark started",
                      cancelled="the benchmark was cancelled", failed="the benchmark failed",
                      lost="lost contact with the benchmark's worker", unrecorded="could not record the result")


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
        self._poll(JOB_FLOW)
        self._poll(BENCHMARK_FLOW)
        self._submit(JOB_FLOW)
        self._submit(BENCHMARK_FLOW)

    def _running(self) -> int:
        return sum(1 for t in self._jobs.values() if not t.cancelling) + len(self._benchmarks)

    def _tracked(self, flow: Flow) -> dict[int, _Tracked]:
        return self._jobs if flow is JOB_FLOW else self._benchmarks

    # --- the state machine ----------------------------------------------------------------------------------
    def _submit(self, flow: Flow) -> None:
        """Submit the queued rows of ``flow`` (oldest first) while fewer than ``max_running`` run; a row
        submitted MAX_ATTEMPTS times fails instead."""
        free = self.settings.max_running - self._running()
        if free <= 0:
            return
        tracked = self._tracked(flow)
        with session_scope(self.sessions) as s:
            for row in s.scalars(select(flow.model).where(flow.model.status == QUEUED).order_by(flow.model.id)).all():
                if free <= 0:
                    break
                if row.id in tracked:
                    continue
                if flow is BENCHMARK_FLOW and benchmark_cache.waits_for_tuning(s, row, tracked):
                    continue  # another run tunes this key's baselines now: use them once cached
                if row.attempts >= MAX_ATTEMPTS:
                    self._fail(flow, s, row.id, _gave_up(flow, row.attempts))
                    continue
                try:
                    handle, data = self._hand_over(flow, s, row)
                except Exception as exc:
                    log.exception("%s %s: submission failed", flow.what, row.id)
                    self._fail(flow, s, row.id, f"could not submit the {flow.what}: {_short(exc)}")
                    continue
                row.attempts += 1
                tracked[row.id] = _Tracked(handle)
                add_event(s, "submitted", f"submitted to Ray (attempt {row.attempts})", data=data,
                          **{flow.owner: row.id})
                free -= 1

    def _hand_over(self, flow: Flow, s: Session, row: Job | BenchmarkRun) -> tuple[Any, dict[str, Any] | None]:
        """Submit one row to the workers: (its handle, the data of its ``submitted`` event)."""
        retries = self.settings.max_attempts - 1
        if flow is JOB_FLOW:
            spec = DiscoverySpec.model_validate(row.spec)
            folder = self.settings.checkpoint_dir(row.id)
            folder.mkdir(parents=True, exist_ok=True)
            submit = self.workers().submit_discovery
            return submit(row.id, spec, folder, **_retry_kwargs(submit, retries)), {"checkpoint_dir": str(folder)}
        expression = row.expression
        if row.rule_id is not None:
            rule = s.get(Rule, row.rule_id)
            if rule is not None:  # a recurrent rule travels as its canonical text
                expression = benchmark_text(rule.canonical, rule.expression)
        submit = self.workers().submit_benchmark
        return submit(row.id, row.suite, expression, tiny=row.tiny, seed=row.seed,
                      **_retry_kwargs(submit, retries), **benchmark_cache.submit_kwargs(s, row, submit)), None

    def _poll(self, flow: Flow) -> None:
        """Poll every tracked row of ``flow`` and apply its state; fail it (and stop tracking it) after
        MAX_POLL_ERRORS consecutive poll errors, or when its state cannot be recorded."""
        tracked_by_id = self._tracked(flow)
        for item_id, tracked in list(tracked_by_id.items()):
            try:
                state = self.workers().poll(tracked.handle)
            except Exception as exc:  # noqa: BLE001
                tracked.poll_errors += 1
                if tracked.poll_errors >= MAX_POLL_ERRORS:
                    del tracked_by_id[item_id]
                    with session_scope(self.sessions) as s:
                        self._fail(flow, s, item_id, f"{flow.lost}: {_short(exc)}")
                continue
            tracked.poll_errors = 0
            try:
                self._apply_state(flow, item_id, tracked, state)
            except Exception as exc:
                log.exception("%s %s: could not record its state", flow.what, item_id)
                tracked_by_id.pop(item_id, None)
                with session_scope(self.sessions) as s:
                    self._fail(flow, s, item_id, f"{flow.unrecorded}: {_short(exc)}")

    def _apply_state(self, flow: Flow, row_id: int, tracked: _Tracked, state: Any) -> None:
        """One poll's state of a row: started, attempts and workers, progress, and at the end its outcome."""
        status = getattr(state, "status", None)
        owner = {flow.owner: row_id}
        with session_scope(self.sessions) as s:
            row = s.get(flow.model, row_id)
            if row is None or row.status not in ACTIVE_STATUSES:
                self._stop_inactive(flow, s, row, row_id, tracked, status)
                return
            if (status == RUNNING and row.status == QUEUED
                    and self._transition(flow, s, row_id, RUNNING, started_at=row.started_at or utcnow())):
                add_event(s, "started", flow.started, **owner)
            self._record_attempts(s, flow.model, row_id, tracked, state, **owner)
            progress = getattr(state, "progress", None)
            if progress:
                self._record_progress(flow, s, row, tracked, progress)
            if status in FINAL_STATUSES:
                del self._tracked(flow)[row_id]
            if status == SUCCEEDED:
                self._finish(flow, s, row, getattr(state, "result", None) or {})
            elif status == FAILED:
                error = getattr(state, "error", None) or flow.failed
                _log_failure(flow.what, row_id, error, getattr(state, "detail", None))
                self._fail(flow, s, row_id, error)
            elif status == CANCELLED and self._transition(flow, s, row_id, CANCELLED, finished_at=utcnow()):
                add_event(s, "cancelled", flow.cancelled, **owner)

    def _stop_inactive(self, flow: Flow, s: Session, row: Job | BenchmarkRun | None, row_id: int,
                       tracked: _Tracked, status: str | None) -> None:
        """A row deleted or cancelled through the API: stop its Ray work once, keep the database as it is."""
        owner = {flow.owner: row_id}
        if not tracked.cancelling:
            tracked.cancelling = True
            try:
                self.workers().cancel(tracked.handle)
            except Exception as exc:  # noqa: BLE001
                log.warning("%s %s: cancel failed: %s", flow.what, row_id, exc)
            if row is not None:
                add_event(s, "stopping", f"stopping the Ray work of the cancelled {flow.what}", **owner)
        if status in FINAL_STATUSES:
            del self._tracked(flow)[row_id]
            if row is not None:
                add_event(s, "stopped", f"the Ray work ended ({status})", **owner)

    def _transition(self, flow: Flow, s: Session, row_id: int, status: str, **values: Any) -> bool:
        """Set the status of an active row; False when it is no longer active (e.g. cancelled meanwhile)."""
        model = flow.model
        result = s.execute(
            update(model).where(model.id == row_id, model.status.in_(ACTIVE_STATUSES))
            .values(status=status, updated_at=utcnow(), **values)
        )
        s.expire_all()
        return bool(result.rowcount)

    def _fail(self, flow: Flow, s: Session, row_id: int, error: str, data: dict[str, Any] | None = None) -> None:
        error = public_reason(error)
        if self._transition(flow, s, row_id, FAILED, error=error, finished_at=utcnow()):
            add_event(s, "failed", error, data=data, **{flow.owner: row_id})

    def _finish(self, flow: Flow, s: Session, row: Job | BenchmarkRun, result: dict[str, Any]) -> None:
        """Record a succeeded row's result (service.runs.recording), then mark it succeeded."""
        if flow is BENCHMARK_FLOW:
            result = benchmark_cache.absorb(s, row, result)  # a first tuning: cache its baselines
            report = record_benchmark_result(s, row, result)
            version = str(report.version)[:32] if report.version is not None else None
            if self._transition(flow, s, row.id, SUCCEEDED, result=jsonable(result), finished_at=utcnow(),
                                suite_version=version, error=None):
                add_event(s, "succeeded", f"{len(report.entries)} learners scored", benchmark_id=row.id)
            return
        summary, rule = record_job_result(s, row, result)
        if self._transition(flow, s, row.id, SUCCEEDED, result=summary, finished_at=utcnow(), error=None):
            acc = summary.get("heldout_accuracy")
            add_event(s, "succeeded", "finished" + (f": held-out accuracy {acc:.3f}" if isinstance(acc, float) else ""),
                      job_id=row.id)
            if rule is not None:
                queue_benchmarks(s, row, rule, list(self.settings.auto_benchmark_suites),
                                 tiny=self.settings.benchmark_tiny)

    # --- attempts and progress ------------------------------------------------------------------------------
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
                    s, "retrying",
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
                add_event(s, "worker", f"running on Ray node {node[:12]} (pid {key[0]}, attempt {tracked.attempt})",
                          data={"pid": key[0], "node_id": key[1], "attempt": tracked.attempt}, **owner)

    def _record_progress(self, flow: Flow, s: Session, row: Job | BenchmarkRun, tracked: _Tracked,
                         progress: dict[str, Any]) -> None:
        """Keep the latest progress on the row; a job's is a :class:`workers.progress.JobProgress` (other keys
        dropped) with a ``progress`` event about every 10 % of its episodes."""
        if flow is BENCHMARK_FLOW:
            if jsonable(progress) != row.progress:
                row.progress = jsonable(progress)
            return
        try:
            clean = jsonable(JobProgress.model_validate(progress).model_dump(exclude_unset=True))
        except ValidationError as exc:
            log.warning("job %s: progress not understood, not recorded: %s", row.id, _short(exc))
            return
        if clean == row.progress:
            return
        s.execute(update(Job).where(Job.id == row.id, Job.status.in_(ACTIVE_STATUSES)).values(progress=clean))
        episode, total = clean.get("episode"), clean.get("total")
        if not isinstance(episode, int):
            return
        step = max(1, (total or 10) // 10)
        last = tracked.last_event_episode
        if last is None or episode - last >= step or time.monotonic() - tracked.last_event_time > 30:
            tracked.last_event_episode = episode
            tracked.last_event_time = time.monotonic()
            add_event(s, "progress", f"episode {episode}/{total}", job_id=row.id,
                      data={k: clean.get(k) for k in ("episode", "total", "meta_accuracy", "meta_loss", "theta")})


def _gave_up(flow: Flow, attempts: int) -> str:
    if flow is JOB_FLOW:
        return (f"gave up after {attempts} attempts: the job was interrupted every time (service restarts or lost "
                "workers)")
    return f"gave up after {attempts} attempts"


def _log_failure(what: str, item_id: int, error: str, detail: str | None) -> None:
    """The full story of a failure (the worker's traceback tail) for the server log only."""
    if detail:
        log.warning("%s %s failed: %s\n%s", what, item_id, error, detail)
    else:
        log.warning("%s %s failed: %s", what, item_id, error)
