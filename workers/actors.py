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

import inspect
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from discovery.results import jsonable
from workers.progress import event_to_dict, result_to_dict, short_error, traceback_tail

#: threads of a job actor: the job, state() and cancel() calls, and slack
ACTOR_CONCURRENCY = 4


def default_engine() -> Callable[..., Any]:
    """``discovery.engine.discover``, the engine's one entry point."""
    from discovery.engine import discover

    return discover


def accepts_keyword(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _parse_rule(expression: str | None) -> Any:
    """The rule of an expression string (``None`` for baselines only): a ``rules.recurrent.RecurrentRule`` for a
    recurrent text (its canonical 'recurrent/v1: …' or user syntax naming recurrent terms, see
    ``rules.recurrent.is_recurrent_text``), else a feedforward ``rules.Rule``; both parsers are whitelists."""
    if expression is None or not str(expression).strip():
        return None
    from rules.recurrent import parse_rule_text

    return parse_rule_text(str(expression))


def _node_id() -> str | None:
    """The Ray node this process runs on (hex id), or None outside Ray."""
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return None


class JobActor:
    """Runs one job in the actor's process and keeps its latest progress.

    ``kind`` is ``"discovery"``, ``"sweep"`` or ``"benchmark"``; ``payload`` holds what the job needs:
    discovery/sweep: ``spec`` (dict), ``checkpoint_dir`` (str or None), ``engine`` (a replacement for
    ``discovery.discover`` or None), ``trial_resources`` (sweep); benchmark: ``suite``, ``expression``,
    ``tiny``, ``seed``, ``device`` (passed on when the runner takes it), ``engine`` (a replacement for
    ``run_suite`` or None).
    """

    def __init__(self, job_id: str, kind: str, payload: dict[str, Any]):
        self.job_id = job_id
        self.kind = kind
        self.payload = payload
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._progress: dict[str, Any] | None = None
        self._events = 0
        self._phase = "ready"
        self._created = time.time()
        self._started: float | None = None

    # --- called by the owner -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the job to its end; return ``{"status", "result", "error", "detail"}`` (never raises)."""
        with self._lock:
            self._phase = "running"
            self._started = time.time()
        outcome: dict[str, Any]
        try:
            if self.kind == "discovery":
                result = self._run_discovery()
            elif self.kind == "sweep":
                result = self._run_sweep()
            elif self.kind == "benchmark":
                result = self._run_benchmark()
            else:
                raise ValueError(f"unknown job kind {self.kind!r}")
            status = "cancelled" if self._stop.is_set() else "succeeded"
            outcome = {"status": status, "result": result, "error": None, "detail": None}
        except Exception as exc:  # noqa: BLE001 - every engine error becomes a failed outcome
            partial = getattr(exc, "result", None)  # SweepFailed carries the trials table
            extra = getattr(exc, "detail", None)
            outcome = {
                "status": "cancelled" if self._stop.is_set() else "failed",
                "result": jsonable(partial) if isinstance(partial, dict) else None,
                "error": None if self._stop.is_set() else short_error(exc),
                "detail": extra if isinstance(extra, str) and extra else traceback_tail(exc),
            }
        with self._lock:
            self._phase = outcome["status"]
        return outcome

    def state(self) -> dict[str, Any]:
        """The latest progress (a copy) and where the job is: phase, cancel flag, times, pid."""
        with self._lock:
            return {
                "phase": self._phase,
                "progress": None if self._progress is None else dict(self._progress),
                "events": self._events,
                "cancel_requested": self._stop.is_set(),
                "created_at": self._created,
                "started_at": self._started,
                "pid": os.getpid(),
                "node_id": _node_id(),
            }

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

    def _set_progress(self, data: dict[str, Any]) -> None:
        data = {**data, "kind": data.get("kind", self.kind), "updated_at": time.time()}
        with self._lock:
            self._progress = data
            self._events += 1

    def _on_event(self, *args: Any, **kwargs: Any) -> None:
        event: Any = args[0] if len(args) == 1 and not kwargs else {"args": list(args), **kwargs}
        self._set_progress(event_to_dict(event))

    def _run_discovery(self) -> dict[str, Any]:
        from discovery.spec import DiscoverySpec

        spec = DiscoverySpec.model_validate(self.payload["spec"])
        engine: Callable[..., Any] | None = self.payload.get("engine")
        if engine is None:
            engine = default_engine()
        checkpoint_dir = self.payload.get("checkpoint_dir")
        if checkpoint_dir is not None:
            from pathlib import Path

            checkpoint_dir = Path(checkpoint_dir)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        result = engine(spec, progress=self._on_event, checkpoint_dir=checkpoint_dir, should_stop=self._should_stop)
        return result_to_dict(result)

    def _run_sweep(self) -> dict[str, Any]:
        from workers.sweep import run_sweep

        return run_sweep(
            self.payload["spec"],
            job_id=self.job_id,
            checkpoint_dir=self.payload.get("checkpoint_dir"),
            should_stop=self._should_stop,
            on_progress=self._set_progress,
            engine=self.payload.get("engine"),
            trial_resources=self.payload.get("trial_resources"),
            max_trial_failures=int(self.payload.get("max_trial_failures", 0)),
        )

    def _run_benchmark(self) -> dict[str, Any]:
        runner: Callable[..., Any] | None = self.payload.get("engine")
        rule = _parse_rule(self.payload.get("expression"))
        if runner is None:  # cached baselines, or a first tuning fanned out as Ray tasks
            from workers.baseline_tasks import run_benchmark_job

            return result_to_dict(run_benchmark_job(self.payload, rule, self._set_progress, self._should_stop))
        extra: dict[str, Any] = {}
        device = self.payload.get("device")
        if device and accepts_keyword(runner, "device"):
            extra["device"] = device
        result = runner(
            self.payload["suite"],
            rule,
            tiny=bool(self.payload.get("tiny", False)),
            seed=int(self.payload.get("seed", 0)),
            progress=self._on_event,
            **extra,
        )
        return result_to_dict(result)


#: the Ray actor class; give resources and the restart budget with ``.options(num_cpus=…, num_gpus=…,
#: max_restarts=…, max_task_retries=…)`` at submission (``workers.ray_jobs``); no restarts by default
RemoteJobActor = ray.remote(max_restarts=0, max_task_retries=0)(JobActor)
