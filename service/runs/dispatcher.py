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

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from discovery.benchmarks.cache import split_baseline_set
from discovery.benchmarks.progress import BenchmarkProgress
from discovery.benchmarks.report import BenchmarkReport
from discovery.inference.fit import InferenceResult
from discovery.inference.job import InferenceSpec
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
from service.db.repositories import baselines as baseline_cache
from service.db.repositories.events import add_event
from service.db.session import session_scope
from service.recordings import engine_spec as recording_engine_spec
from service.rulebook import benchmark_layered, benchmark_text
from service.runs.inference_recording import inference_summary, record_inference_result
from service.runs.lease import DispatcherLease
from service.runs.recording import job_summary, queue_benchmarks, record_benchmark_result, record_job_result
from service.runs.states import Tracked, owner_key, set_status
from service.settings import Settings
from service.uploads import engine_spec
from workers.contract import InferenceWorkers, JobState, WorkerInfo, Workers
from workers.progress import JobProgress, JobResult

log = logging.getLogger("plasticity.dispatcher")

#: Submissions of one job or benchmark before it is failed (restarts while it ran, lost workers).
MAX_ATTEMPTS = 5
#: Consecutive poll errors before a job is failed.
MAX_POLL_ERRORS = 5
#: Seconds between attempts to connect to Ray after a failure.
RAY_RETRY_SECONDS = 10.0


@dataclass(frozen=True)
class Flow:
    """What differs between the two kinds of tracked work (the words of their events); the loop that moves them
    through the states of :mod:`service.runs.states` is one."""

    what: str                             # "job" | "benchmark"
    model: Tracked
    started: str
    cancelled: str
    failed: str
    lost: str
    unrecorded: str


JOB_FLOW = Flow("job", Job, started="meta-training started", cancelled="the Ray work was cancelled",
                failed="the job failed without a message", lost="lost contact with the job's Ray worker",
                unrecorded="could not record the job's result")
BENCHMARK_FLOW = Flow("benchmark", BenchmarkRun, started="benchmark started",
                      cancelled="the benchmark was cancelled", failed="the benchmark failed",
                      lost="lost contact with the benchmark's worker", unrecorded="could not record the result")
FLOWS = (JOB_FLOW, BENCHMARK_FLOW)


@dataclass
class _Tracked:
    """A submitted job or benchmark: its workers' handle and what the dispatcher remembers about it."""

    handle: object
    poll_errors: int = 0
    last_event_episode: int | None = None
    last_event_time: float = field(default_factory=time.monotonic)
    cancelling: bool = False
    attempt: int = 1
    worker: WorkerInfo | None = None
    resumed: str | None = None       # the last "resumed …" note written as an event


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


class Dispatcher:
    """Moves jobs and benchmarks between the database and the workers (one thread; see the module docstring).

    ``workers``: anything that implements :class:`workers.contract.Workers` (default: the Ray implementation,
    ``workers.ray_jobs``, imported on first use). Run exactly one dispatcher per database: further API replicas
    set ``PLASTICITY_DISPATCHER=0``.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], workers: Workers | None = None,
                 lease: DispatcherLease | None = None):
        self.settings = settings
        self.sessions = sessions
        self._workers = workers
        self.lease = lease or DispatcherLease(sessions.kw["bind"], settings.data_dir)
        self._tracked: dict[Flow, dict[int, _Tracked]] = {flow: {} for flow in FLOWS}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._ray_next_try = 0.0
        self.ray_state: dict[str, str | None] = {"state": "not started"}
        self.last_error: str | None = None
        self.ticks = 0

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread: it takes the lease when free (then requeues interrupted work) and dispatches while
        it holds it; a standby process waits for the holder to end."""
        self._thread = threading.Thread(target=self._run, name="plasticity-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread. Ray work keeps its DB status, so the next start resubmits it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.lease.release()

    def wake(self) -> None:
        """Run the next tick now (after a submission or a cancel)."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, object]:
        """For ``/api/health``."""
        return {"enabled": True, "alive": self.alive, "active": self.lease.held, "pid": os.getpid(),
                "ticks": self.ticks, "jobs": sorted(self._tracked[JOB_FLOW]),
                "benchmarks": sorted(self._tracked[BENCHMARK_FLOW]), "last_error": self.last_error}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._holds_lease():
                    self.tick()
            except Exception as exc:
                self.last_error = _short(exc)
                log.exception("dispatcher tick failed")
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    def _holds_lease(self) -> bool:
        """Whether this process is the active dispatcher; on taking the lease, requeue interrupted work first."""
        if self.lease.held:
            return True
        if not self.lease.acquire():
            return False
        log.info("dispatcher %s took the lease", os.getpid())
        self.recover()
        return True

    # --- workers --------------------------------------------------------------------------------------------
    def workers(self) -> Workers:
        """The workers (``workers.ray_jobs`` unless a stand-in was given), imported on first use."""
        if self._workers is None:
            from workers import ray_jobs

            self._workers = ray_jobs  # the module implements the Workers protocol
        return self._workers

    def _ray_ready(self) -> bool:
        if self.ray_state.get("state") == "connected":
            return True
        now = time.monotonic()
        if now < self._ray_next_try:
            return False
        try:
            address = self.workers().ensure_ray()
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
            for flow in FLOWS:
                model = flow.model
                for row_id in s.scalars(select(model.id).where(model.status == RUNNING)).all():
                    set_status(s, model, row_id, QUEUED, event="requeued", finished_at=None,
                               message=f"the service restarted while the {flow.what} ran; resubmitting"
                               + (" (the engine resumes from its last checkpoint)" if model is Job else ""))
                    requeued.update([row_id] if model is Job else [])
            for job_id in s.scalars(select(Job.id).where(Job.status == QUEUED, Job.attempts > 0)).all():
                if job_id not in requeued:
                    add_event(s, "requeued", "the service restarted before the job started; resubmitting",
                              job_id=job_id)

    # --- one tick: the loop -------------------------------------------------------------------------------
    def tick(self) -> None:
        """Poll every submitted row, then submit queued rows, for jobs and benchmarks alike."""
        self.ticks += 1
        if not self._ray_ready():
            return
        for flow in FLOWS:
            self._poll(flow)
        for flow in FLOWS:
            self._submit(flow)

    def _running(self) -> int:
        jobs = sum(1 for t in self._tracked[JOB_FLOW].values() if not t.cancelling)
        return jobs + len(self._tracked[BENCHMARK_FLOW])

    def _submit(self, flow: Flow) -> None:
        """Submit the queued rows of ``flow`` (oldest first) while fewer than ``max_running`` run; a row
        submitted MAX_ATTEMPTS times fails instead."""
        free = self.settings.max_running - self._running()
        if free <= 0:
            return
        tracked = self._tracked[flow]
        with session_scope(self.sessions) as s:
            for row in s.scalars(select(flow.model).where(flow.model.status == QUEUED).order_by(flow.model.id)).all():
                if free <= 0:
                    break
                if row.id in tracked:
                    continue
                if flow is BENCHMARK_FLOW and baseline_cache.waits_for_tuning(s, row, tracked):
                    continue  # another run tunes this key's baselines now: use them once cached
                if row.attempts >= MAX_ATTEMPTS:
                    self._fail(flow, s, row.id, _gave_up(flow, row.attempts))
                    continue
                try:
                    handle, folder = self._hand_over(s, row)
                except Exception as exc:
                    log.exception("%s %s: submission failed", flow.what, row.id)
                    self._fail(flow, s, row.id, f"could not submit the {flow.what}: {_short(exc)}")
                    continue
                row.attempts += 1
                tracked[row.id] = _Tracked(handle)
                add_event(s, "submitted", f"submitted to Ray (attempt {row.attempts})",
                          data={"checkpoint_dir": folder} if folder else None, **{owner_key(flow.model): row.id})
                free -= 1

    def _hand_over(self, s: Session, row: Job | BenchmarkRun) -> tuple[object, str | None]:
        """Submit one row to the workers: (its handle, the job's checkpoint folder)."""
        retries = self.settings.max_attempts - 1
        if isinstance(row, Job) and (row.spec or {}).get("kind") == "inference":   # docs/inference.md
            return self._hand_over_inference(row, retries), None
        if isinstance(row, Job):
            spec = engine_spec(DiscoverySpec.model_validate(row.spec), self.settings)   # an upload's folder
            folder = self.settings.checkpoint_dir(row.id)
            folder.mkdir(parents=True, exist_ok=True)
            return self.workers().submit_discovery(row.id, spec, folder, max_retries=retries), str(folder)
        expression = row.expression
        rule = s.get(Rule, row.rule_id) if row.rule_id is not None else None
        if rule is not None:  # a recurrent rule travels as its canonical text
            expression = benchmark_text(rule.canonical, rule.expression)
        cached = baseline_cache.cached_for(s, row)
        return self.workers().submit_benchmark(row.id, row.suite, expression, tiny=row.tiny, seed=row.seed,
                                               max_retries=retries, baselines=cached,
                                               layered=benchmark_layered(rule.provenance if rule else None)), None

    def _hand_over_inference(self, row: Job, retries: int) -> object:
        """Submit an inference job (its recording's folder filled in) to workers that run them."""
        workers = self.workers()
        if not isinstance(workers, InferenceWorkers):
            raise TypeError("these workers do not run inference jobs")
        spec = recording_engine_spec(InferenceSpec.model_validate(row.spec), self.settings)
        return workers.submit_inference(row.id, spec, max_retries=retries)

    def _poll(self, flow: Flow) -> None:
        """Poll every tracked row of ``flow`` and apply its state; fail it (and stop tracking it) after
        MAX_POLL_ERRORS consecutive poll errors, or when its state cannot be recorded."""
        tracked_by_id = self._tracked[flow]
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

    def _apply_state(self, flow: Flow, row_id: int, tracked: _Tracked, state: JobState) -> None:
        """One poll's state of a row: started, attempts and workers, progress, and at the end its outcome."""
        with session_scope(self.sessions) as s:
            row = s.get(flow.model, row_id)
            if row is None or row.status not in ACTIVE_STATUSES:
                self._stop_inactive(flow, s, row, row_id, tracked, state)
                return
            if state.status in (RUNNING, SUCCEEDED) and row.status == QUEUED:  # it ran between two polls
                set_status(s, flow.model, row_id, RUNNING, event="started", message=flow.started,
                           started_at=row.started_at or utcnow())
            self._record_attempts(s, flow, row_id, tracked, state)
            if state.progress is not None:
                self._record_progress(s, row, tracked, state.progress)
            if state.done:
                del self._tracked[flow][row_id]
            if state.status == SUCCEEDED:
                self._finish(flow, s, row, state.result)
            elif state.status == FAILED:
                error = state.error or flow.failed
                _log_failure(flow.what, row_id, error, state.detail)
                self._fail(flow, s, row_id, error)
            elif state.status == CANCELLED:
                set_status(s, flow.model, row_id, CANCELLED, event="cancelled", message=flow.cancelled)

    def _stop_inactive(self, flow: Flow, s: Session, row: Job | BenchmarkRun | None, row_id: int,
                       tracked: _Tracked, state: JobState) -> None:
        """A row deleted or cancelled through the API: stop its Ray work once, keep the database as it is."""
        owner = {owner_key(flow.model): row_id}
        if not tracked.cancelling:
            tracked.cancelling = True
            try:
                self.workers().cancel(tracked.handle)
            except Exception as exc:  # noqa: BLE001
                log.warning("%s %s: cancel failed: %s", flow.what, row_id, exc)
            if row is not None:
                add_event(s, "stopping", f"stopping the Ray work of the cancelled {flow.what}", **owner)
        if state.done:
            del self._tracked[flow][row_id]
            if row is not None:
                add_event(s, "stopped", f"the Ray work ended ({state.status})", **owner)

    def _fail(self, flow: Flow, s: Session, row_id: int, error: str) -> None:
        error = public_reason(error)
        set_status(s, flow.model, row_id, FAILED, event="failed", message=error, error=error)

    def _finish(self, flow: Flow, s: Session, row: Job | BenchmarkRun,
                result: JobResult | BenchmarkReport | None) -> None:
        """Record a succeeded row's result (service.runs.recording), then mark it succeeded."""
        if isinstance(row, BenchmarkRun) and isinstance(result, BenchmarkReport):
            report, tuned = split_baseline_set(result)
            if tuned is not None:  # a first tuning: cache its baselines
                baseline_cache.store(s, tuned, row.id)
            record_benchmark_result(s, row, report)
            version = str(report.version)[:32] if report.version is not None else None
            set_status(s, BenchmarkRun, row.id, SUCCEEDED, event="succeeded",
                       message=f"{len(report.entries)} learners scored", result=report.to_json(),
                       suite_version=version, error=None)
        elif isinstance(row, Job) and isinstance(result, InferenceResult):
            rule = record_inference_result(s, row, result)
            ev = result.heldout_explained_variance
            set_status(s, Job, row.id, SUCCEEDED, event="succeeded", result=inference_summary(result, rule),
                       error=None, message="inferred" + (f": held-out explained variance {ev:.3f}"
                                                         if ev is not None else ""))
        elif isinstance(row, Job) and isinstance(result, JobResult):
            rule = record_job_result(s, row, result)
            acc = result.heldout_accuracy
            if set_status(s, Job, row.id, SUCCEEDED, event="succeeded", result=job_summary(result), error=None,
                          message="finished" + (f": held-out accuracy {acc:.3f}" if acc is not None else "")):
                queue_benchmarks(s, row, rule, list(self.settings.auto_benchmark_suites),
                                 tiny=self.settings.benchmark_tiny)
        else:
            self._fail(flow, s, row.id, f"the workers reported success without a {flow.what} result")

    # --- attempts and progress ------------------------------------------------------------------------------
    def _record_attempts(self, s: Session, flow: Flow, row_id: int, tracked: _Tracked, state: JobState) -> None:
        """Count the attempts Ray made since the last poll (``attempts`` += new ones, a ``retrying`` event each)
        and write a ``worker`` event when a new worker process (pid, node) runs the job or benchmark."""
        owner = {owner_key(flow.model): row_id}
        if state.attempt > tracked.attempt:
            model = flow.model
            s.execute(update(model).where(model.id == row_id)
                      .values(attempts=model.attempts + state.attempt - tracked.attempt))
            previous = tracked.worker
            for n in range(tracked.attempt + 1, state.attempt + 1):
                add_event(
                    s, "retrying",
                    f"the worker was lost; Ray restarted it on a live node (attempt {n} of "
                    f"{self.settings.max_attempts} in this submission); it resumes from its last checkpoint",
                    data={"attempt": n, "max_attempts": self.settings.max_attempts,
                          "previous_node_id": previous.node_id if previous else None,
                          "previous_pid": previous.pid if previous else None},
                    **owner,
                )
            tracked.attempt = state.attempt
        worker = state.worker
        if worker is not None and worker != tracked.worker:
            tracked.worker = worker
            node = str(worker.node_id or "?")
            add_event(s, "worker", f"running on Ray node {node[:12]} (pid {worker.pid}, attempt {tracked.attempt})",
                      data={"pid": worker.pid, "node_id": worker.node_id, "attempt": tracked.attempt}, **owner)

    def _record_progress(self, s: Session, row: Job | BenchmarkRun, tracked: _Tracked,
                         progress: JobProgress | BenchmarkProgress) -> None:
        """Keep the latest progress on the row; a job's adds a ``progress`` event about every 10 % of its
        episodes (or every 30 s)."""
        if isinstance(row, BenchmarkRun):
            clean = jsonable(progress.model_dump())
            if clean != row.progress:
                row.progress = clean
            return
        clean = jsonable(progress.model_dump(exclude_unset=True))
        if clean == row.progress:
            return
        s.execute(update(Job).where(Job.id == row.id, Job.status.in_(ACTIVE_STATUSES)).values(progress=clean))
        note = clean.get("resumed")
        if isinstance(note, str) and note != tracked.resumed:   # where this attempt resumed (which stage, episode)
            tracked.resumed = note
            add_event(s, "resumed", f"attempt {tracked.attempt} {note}", job_id=row.id,
                      data={"attempt": tracked.attempt, "episode": clean.get("resumed_from_episode"),
                            "phase": note})
        episode, total = clean.get("episode"), clean.get("total")
        if not isinstance(episode, int):
            return
        step = max(1, (total or 10) // 10)
        last = tracked.last_event_episode
        if last is None or episode - last >= step or time.monotonic() - tracked.last_event_time > 30:
            tracked.last_event_episode = episode
            tracked.last_event_time = time.monotonic()
            add_event(s, "progress", _progress_text(clean), job_id=row.id,
                      data={k: clean.get(k) for k in ("episode", "total", "meta_accuracy", "meta_loss", "theta",
                                                      "phase")})


def _progress_text(progress: dict[str, object]) -> str:
    """"episode 69/600 (fit 2 terms)": the job's episode of its total, the search stage apart."""
    text = f"episode {progress.get('episode')}/{progress.get('total')}"
    return text + (f" ({progress['phase']})" if progress.get("phase") else "")


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
