"""A sweep: one discovery job fanned out into Ray Tune trials over seeds, meta learning rates and L1 weights.

Each trial meta-learns θ of ΔW_ℓ = Σ_r θ_r F^r_ℓ with its own (seed, η_meta, λ) — the Adam step size η_meta and
the weight λ of the sparsity penalty λ‖θ‖₁ in the meta-loss (docs/science.md) — taken from the grid
``spec.sweep.seeds × spec.sweep.lr × spec.sweep.l1`` (a missing list keeps the spec's value). The best trial is
the one with the highest held-out query accuracy (ties: the earlier grid point); its full result becomes the
job's result, and every trial is listed under ``trials``.

The Tune driver (:func:`run_sweep`) runs inside the job's coordinating actor, in the thread that runs the job;
it uses no CPU of its own, and each trial asks for the spec's ``resources``. A Tune callback feeds the
aggregated progress (trials done / total, best so far, summed episodes) to the actor, and a Tune stopper ends
all trials once the job is cancelled.

Recovery: ``max_trial_failures`` goes to Tune's ``FailureConfig(max_failures=…)``. A trial whose worker process
or node dies is restarted by Tune on any node with the resources, and its engine resumes from the trial's own
checkpoint folder (``<checkpoint_dir>/trials/<seed=…>``), so only that trial loses the episodes since its last
checkpoint; the other trials run on. An engine error ends the trial as ``failed`` (reported, not raised), so Tune
never retries it. Each trial row says which Ray node ran it (``node_id``) and how often it was retried
(``retries``). Tracebacks go to this process's log, not into the rows.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune

from discovery.results import jsonable
from discovery.spec import DiscoverySpec, SweepSpec
from workers.contract import DiscoverFn, DiscoveryTask
from workers.progress import JobProgress, JobResult, job_progress, short_error, traceback_tail
from workers.tune_monitor import METRIC, CancelStopper, Monitor, MonitorCallback

#: the sweepable fields: SweepSpec attribute → (MetaSpec attribute, key in a trial's config)
SWEEP_FIELDS: dict[str, str] = {"seeds": "seed", "lr": "lr", "l1": "l1"}
#: at most one Tune report per this many seconds per trial (each report is a round trip to the Tune driver)
REPORT_INTERVAL_S = 0.5

log = logging.getLogger(__name__)


def _node_id() -> str | None:
    """The Ray node of this process (hex id), or None outside Ray."""
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001
        return None


class SweepFailed(RuntimeError):
    """Every trial of a sweep failed; the message is the first trial's error."""

    def __init__(self, message: str, detail: str | None = None, result: dict[str, Any] | None = None):
        super().__init__(message)
        self.detail = detail
        self.result = result


def sweep_grid(sweep: SweepSpec) -> list[dict[str, float | int]]:
    """The grid points of a ``SweepSpec`` (or a dict of it) in order: seeds outermost, then lr, then l1.

    Each point is a dict with the keys ``seed``/``lr``/``l1`` of the lists that are given and non-empty;
    repeated values in a list count once.
    """
    data = sweep.model_dump() if hasattr(sweep, "model_dump") else dict(sweep or {})
    axes = [(SWEEP_FIELDS[name], list(dict.fromkeys(data.get(name) or []))) for name in SWEEP_FIELDS]
    axes = [(key, values) for key, values in axes if values]
    if not axes:
        return []
    keys = [key for key, _ in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in axes))]


def apply_overrides(spec: DiscoverySpec, config: dict[str, float | int]) -> DiscoverySpec:
    """A copy of the spec with ``meta.seed/lr/l1`` from ``config`` and an empty sweep (validated)."""
    data = spec.model_dump()
    data = {**data, "meta": dict(data.get("meta") or {}), "sweep": {}}
    for key in ("seed", "lr", "l1"):
        if key in config:
            data["meta"][key] = config[key]
    return DiscoverySpec.model_validate(data)


def trial_key(config: dict[str, float | int]) -> str:
    """A stable, file-name-safe name of a grid point, e.g. ``seed=1_lr=0.01``."""
    parts = [f"{k}={config[k]}" for k in ("seed", "lr", "l1") if k in config]
    return "_".join(parts).replace("/", "-") or "default"


def _trainable(
    config: dict[str, Any],
    *,
    base_spec: DiscoverySpec,
    checkpoint_root: str | None,
    engine: DiscoverFn | None,
    report_interval_s: float,
) -> None:
    """One Tune trial: run the engine on the spec with this grid point; report progress, then the outcome.

    Progress goes out as ``{"kind": "progress", "progress": {...}}`` at most every ``report_interval_s``; the
    last report is ``{"kind": "final", "status": "succeeded"|"failed", ...}`` with the whole result or the error.
    Engine exceptions are caught here, so Tune only sees errors of the trial process itself.
    """
    spec = apply_overrides(base_spec, config)
    if engine is None:
        from discovery.router import discover as engine
    checkpoint_dir = Path(checkpoint_root) / trial_key(config) if checkpoint_root else None
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last_sent = [0.0]

    def progress(event: object) -> None:
        now = time.monotonic()
        data = jsonable(job_progress(event).model_dump(exclude_unset=True))
        is_last = data.get("episode") is not None and data.get("episode") == data.get("total")
        if now - last_sent[0] >= report_interval_s or is_last:
            last_sent[0] = now
            tune.report({"kind": "progress", "progress": data})

    started = time.monotonic()
    try:
        result = jsonable(engine(spec, progress=progress, checkpoint_dir=checkpoint_dir, should_stop=None))
    except Exception as exc:  # noqa: BLE001 - reported as a failed trial
        tune.report(
            {
                "kind": "final",
                "status": "failed",
                "error": short_error(exc),
                "detail": traceback_tail(exc),
                "wall_time_s": time.monotonic() - started,
                "node_id": _node_id(),
            }
        )
        return
    tune.report(
        {
            "kind": "final",
            "status": "succeeded",
            METRIC: result.get(METRIC),
            "result": result,
            "wall_time_s": time.monotonic() - started,
            "node_id": _node_id(),
        }
    )


def run_sweep(
    task: DiscoveryTask,
    *,
    job_id: str,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[JobProgress], None] | None = None,
    report_interval_s: float = REPORT_INTERVAL_S,
) -> JobResult:
    """Run the sweep of ``spec`` as Ray Tune trials and return the job's result.

    The result is the best trial's engine result plus ``trials`` (one row per grid point: index, config,
    status, heldout_accuracy, heldout_ci95, rule, error, wall_time_s, node_id, retries), ``best_trial`` (its
    index) and
    ``sweep`` (metric, mode, grid). Tune keeps its files under ``checkpoint_dir/tune`` (or a temporary folder,
    removed afterwards); each trial's engine checkpoints go to ``checkpoint_dir/trials/<seed=…_lr=…>``.
    Raises :class:`SweepFailed` when no trial succeeded (also when it was cancelled before one did).
    """
    spec, checkpoint_dir, engine = task.spec, task.checkpoint_dir, task.engine
    trial_resources = task.trial_resources.model_dump() if task.trial_resources is not None else None
    max_trial_failures = task.max_trial_failures

    def report(snapshot: dict[str, Any]) -> None:
        if on_progress is not None:
            on_progress(JobProgress.model_validate(snapshot))

    grid = sweep_grid(spec.sweep)
    if not grid:
        raise ValueError("the spec has an empty sweep")
    stop = should_stop or (lambda: False)
    monitor = Monitor(grid, spec.meta.episodes, stop)
    report(monitor.snapshot())

    # Tune reads these at start: no CSV/JSON/TensorBoard loggers, no fancy console output.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")

    temp_dir: str | None = None
    if checkpoint_dir is not None:
        root = Path(checkpoint_dir).resolve()
        storage = root / "tune"
        storage.mkdir(parents=True, exist_ok=True)
        trials_root: str | None = str(root / "trials")
    else:
        temp_dir = tempfile.mkdtemp(prefix="plasticity-tune-")
        storage = Path(temp_dir)
        trials_root = None

    resources = dict(trial_resources or {"cpu": spec.resources.num_cpus, "gpu": 0.0})
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable,
            base_spec=spec,
            checkpoint_root=trials_root,
            engine=engine,
            report_interval_s=report_interval_s,
        ),
        resources,
    )
    # a grid_search per key: Tune expands the full product, the same points as `grid`
    param_space = {key: tune.grid_search(list(dict.fromkeys(p[key] for p in grid))) for key in grid[0]}
    safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"sweep-{job_id}")
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=1,
            reuse_actors=True,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            trial_name_creator=lambda trial: f"{safe_name}_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=f"{safe_name}-{int(time.time())}",
            storage_path=str(storage),
            verbose=0,
            sync_config=tune.SyncConfig(sync_artifacts=False),
            failure_config=tune.FailureConfig(max_failures=max(0, int(max_trial_failures))),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            stop=CancelStopper(monitor),
            callbacks=[MonitorCallback(monitor, report)],
            log_to_file=False,
        ),
    )
    try:
        tuner.fit()
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

    cancelled = bool(stop())
    with monitor.lock:
        for record in monitor.records:
            if record["status"] in ("pending", "running"):
                record["status"] = "cancelled" if cancelled else "failed"
                if not cancelled:
                    record.setdefault("error", "the trial ended without a result")
        for record in monitor.records:
            if record.get("detail"):
                log.warning("sweep %s trial %s failed: %s\n%s", job_id, record["index"], record.get("error"),
                            record["detail"])
        trials = [
            {k: v for k, v in r.items() if k not in ("meta_loss", "detail")}
            for r in monitor.records
        ]
    report(monitor.snapshot())
    best = monitor.best_index()
    sweep_info = {
        "metric": METRIC,
        "mode": "max",
        "grid": spec.sweep.model_dump(exclude_none=True),
        "trials_total": len(grid),
        "trials_succeeded": sum(1 for t in trials if t["status"] == "succeeded"),
    }
    if best is None:
        summary = {"trials": trials, "best_trial": None, "sweep": sweep_info}
        if cancelled:
            raise SweepFailed("the sweep was cancelled before any trial finished", None, summary)
        first = next((t for t in trials if t.get("error")), None)
        message = first["error"] if first else "no trial succeeded"
        detail = monitor.records[first["index"]].get("detail") if first else None
        raise SweepFailed(f"all {len(trials)} trial(s) failed; first: {message}", detail, summary)
    return JobResult.model_validate({**monitor.results[best], "trials": trials, "best_trial": best,
                                     "sweep": sweep_info})
