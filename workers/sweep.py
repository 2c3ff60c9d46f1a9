"""A sweep: one discovery job fanned out into Ray Tune trials over seeds, meta learning rates and L1 weights.

Each trial meta-learns θ of ΔW_ℓ = Σ_r θ_r F^r_ℓ with its own (seed, η_meta, λ) — the Adam step size η_meta and
the weight λ of the sparsity penalty λ‖θ‖₁ in the meta-loss (SCIENCE.md) — taken from the grid
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

import contextlib
import itertools
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune

from workers.progress import (
    describe_ray_error,
    event_to_dict,
    one_line,
    result_to_dict,
    short_error,
    tail_text,
    traceback_tail,
)

#: the sweepable fields: SweepSpec attribute → (MetaSpec attribute, key in a trial's config)
SWEEP_FIELDS: dict[str, str] = {"seeds": "seed", "lr": "lr", "l1": "l1"}
#: at most one Tune report per this many seconds per trial (each report is a round trip to the Tune driver)
REPORT_INTERVAL_S = 0.5
#: the metric that ranks trials (higher is better)
METRIC = "heldout_accuracy"

Engine = Callable[..., Any]
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


def sweep_grid(sweep: Any) -> list[dict[str, Any]]:
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


def apply_overrides(spec: Any, config: dict[str, Any]) -> Any:
    """A copy of the ``DiscoverySpec`` with ``meta.seed/lr/l1`` from ``config`` and an empty sweep (validated)."""
    from discovery.spec import DiscoverySpec

    data = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    data = {**data, "meta": dict(data.get("meta") or {}), "sweep": {}}
    for key in ("seed", "lr", "l1"):
        if key in config:
            data["meta"][key] = config[key]
    return DiscoverySpec.model_validate(data)


def trial_key(config: dict[str, Any]) -> str:
    """A stable, file-name-safe name of a grid point, e.g. ``seed=1_lr=0.01``."""
    parts = [f"{k}={config[k]}" for k in ("seed", "lr", "l1") if k in config]
    return "_".join(parts).replace("/", "-") or "default"


def _score(record: dict[str, Any]) -> float:
    """Ranking value of a finished trial: held-out accuracy, else its last meta accuracy, else −∞."""
    value = record.get(METRIC)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    value = record.get("final_meta_accuracy")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return -math.inf


def _trainable(
    config: dict[str, Any],
    *,
    base_spec: dict[str, Any],
    checkpoint_root: str | None,
    engine: Engine | None,
    report_interval_s: float,
) -> None:
    """One Tune trial: run the engine on the spec with this grid point; report progress, then the outcome.

    Progress goes out as ``{"kind": "progress", "progress": {...}}`` at most every ``report_interval_s``; the
    last report is ``{"kind": "final", "status": "succeeded"|"failed", ...}`` with the whole result or the error.
    Engine exceptions are caught here, so Tune only sees errors of the trial process itself.
    """
    spec = apply_overrides(base_spec, config)
    if engine is None:
        from workers.actors import default_engine

        engine = default_engine()
    checkpoint_dir = Path(checkpoint_root) / trial_key(config) if checkpoint_root else None
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last_sent = [0.0]

    def progress(event: Any) -> None:
        now = time.monotonic()
        data = event_to_dict(event)
        is_last = data.get("episode") is not None and data.get("episode") == data.get("total")
        if now - last_sent[0] >= report_interval_s or is_last:
            last_sent[0] = now
            tune.report({"kind": "progress", "progress": data})

    started = time.monotonic()
    try:
        result = result_to_dict(engine(spec, progress=progress, checkpoint_dir=checkpoint_dir, should_stop=None))
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


class _Monitor:
    """What the sweep knows so far, shared by the Tune callback, the stopper and the job's actor (locked)."""

    def __init__(self, grid: list[dict[str, Any]], episodes_per_trial: int, should_stop: Callable[[], bool]):
        self.grid = grid
        self.episodes_per_trial = episodes_per_trial
        self.should_stop = should_stop
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = [
            {"index": i, "config": cfg, "status": "pending", "episode": 0, "total": episodes_per_trial,
             "retries": 0}
            for i, cfg in enumerate(grid)
        ]
        self.results: dict[int, dict[str, Any]] = {}
        self.latest: dict[str, Any] = {}

    def index_of(self, config: dict[str, Any]) -> int | None:
        """Grid index of a trial's config (matching only the swept keys)."""
        for i, point in enumerate(self.grid):
            if all(config.get(k) == v for k, v in point.items()):
                return i
        return None

    def on_result(self, config: dict[str, Any], result: dict[str, Any]) -> None:
        index = self.index_of(config)
        if index is None:
            return
        with self.lock:
            record = self.records[index]
            if result.get("kind") == "progress":
                data = dict(result.get("progress") or {})
                record["status"] = "running"
                for key in ("episode", "total", "meta_loss", "meta_accuracy"):
                    if data.get(key) is not None:
                        record[key] = data[key]
                self.latest = {**data, "trial": index, "config": record["config"]}
            elif result.get("kind") == "final":
                record["status"] = result.get("status", "failed")
                record["wall_time_s"] = result.get("wall_time_s")
                record["node_id"] = result.get("node_id")
                if record["status"] == "succeeded":
                    full = dict(result.get("result") or {})
                    self.results[index] = full
                    history = full.get("history") or []
                    last = history[-1] if history and isinstance(history[-1], dict) else {}
                    record.update(
                        {
                            METRIC: full.get(METRIC),
                            "heldout_ci95": full.get("heldout_ci95"),
                            "final_meta_accuracy": last.get("meta_accuracy"),
                            "rule": full.get("rule"),
                            "device": full.get("device"),
                            "episode": record.get("total", self.episodes_per_trial),
                        }
                    )
                else:
                    record["error"] = result.get("error")
                    record["detail"] = result.get("detail")

    def on_error(self, config: dict[str, Any], message: str, detail: str | None) -> None:
        index = self.index_of(config)
        if index is None:
            return
        with self.lock:
            record = self.records[index]
            if record["status"] not in ("succeeded", "failed"):
                record.update({"status": "failed", "error": message, "detail": detail})

    def best_index(self) -> int | None:
        done = [r for r in self.records if r["status"] == "succeeded" and r["index"] in self.results]
        if not done:
            return None
        return max(done, key=lambda r: (_score(r), -r["index"]))["index"]

    def snapshot(self) -> dict[str, Any]:
        """Aggregated progress: counts, summed episodes, best so far, the latest event and a row per trial."""
        with self.lock:
            records = [dict(r) for r in self.records]
            latest = dict(self.latest)
        best = self.best_index()
        counts = {s: sum(1 for r in records if r["status"] == s) for s in ("pending", "running", "succeeded", "failed")}
        return {
            "kind": "sweep",
            "trials_total": len(records),
            "trials_done": counts["succeeded"] + counts["failed"],
            "trials_running": counts["running"],
            "trials_failed": counts["failed"],
            "episode": sum(int(r.get("episode") or 0) for r in records),
            "total": sum(int(r.get("total") or 0) for r in records),
            "meta_accuracy": latest.get("meta_accuracy"),
            "meta_loss": latest.get("meta_loss"),
            "theta": latest.get("theta"),
            "latest_trial": latest.get("trial"),
            "best_trial": best,
            f"best_{METRIC}": None if best is None else records[best].get(METRIC),
            "best_config": None if best is None else records[best]["config"],
            "trials": [
                {k: r.get(k) for k in ("index", "config", "status", "episode", "total", "meta_accuracy", METRIC)}
                for r in records
            ],
        }

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config; the lock and the stop callable stay behind (never restored from disk).
        state = dict(self.__dict__)
        state["lock"] = None
        state["should_stop"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()
        self.should_stop = lambda: False


def _trial_error(trial: Any) -> tuple[str, str | None]:
    """(one-line reason, detail) of a trial that Tune saw fail (its process died, or the trainable raised).

    Tune writes the error next to the trial's driver-side files first and copies them to storage only later,
    so the local files are read before Tune's own getters.
    """
    exc: Any = None
    local = getattr(trial, "local_path", None)
    meta = getattr(trial, "run_metadata", None)
    pickled = getattr(meta, "pickled_error_filename", None)
    text_name = getattr(meta, "error_filename", None)
    with contextlib.suppress(Exception):
        if local and pickled and (Path(local) / pickled).exists():
            from ray import cloudpickle

            with open(Path(local) / pickled, "rb") as f:
                exc = cloudpickle.load(f)
    if exc is None:
        with contextlib.suppress(Exception):
            if local and text_name and (Path(local) / text_name).exists():
                exc = (Path(local) / text_name).read_text()
    if exc is None:
        with contextlib.suppress(Exception):
            exc = trial.get_pickled_error() or trial.get_error()
    if isinstance(exc, BaseException):
        return describe_ray_error(exc, "the trial's worker")
    if exc:
        text = str(exc).strip()
        return one_line(text.splitlines()[-1]), tail_text(text)
    return "the trial failed (no error recorded)", None


class _MonitorCallback(tune.Callback):
    """Forwards trial results and errors to the monitor and pushes a fresh snapshot to ``on_progress``."""

    def __init__(self, monitor: _Monitor, on_progress: Callable[[dict[str, Any]], None] | None):
        self.monitor = monitor
        self.on_progress = on_progress

    def _push(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.monitor.snapshot())

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        index = self.monitor.index_of(trial.config)
        if index is not None:
            with self.monitor.lock:
                if self.monitor.records[index]["status"] == "pending":
                    self.monitor.records[index]["status"] = "running"
        self._push()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.monitor.on_result(trial.config, result)
        self._push()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Tune retries a trial whose worker died (FailureConfig.max_failures): count it, keep it running."""
        index = self.monitor.index_of(trial.config)
        if index is not None:
            with self.monitor.lock:
                record = self.monitor.records[index]
                record["retries"] = int(record.get("retries") or 0) + 1
                record["status"] = "running"
        log.warning("sweep trial %s: its worker died; Tune restarts it from its checkpoint", trial.config)
        self._push()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        message, detail = _trial_error(trial)
        self.monitor.on_error(trial.config, message, detail)
        self._push()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._push()

    def __getstate__(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "on_progress": None}


class _CancelStopper(tune.Stopper):
    """Stops every trial once the job is cancelled."""

    def __init__(self, monitor: _Monitor):
        self.monitor = monitor

    def __call__(self, trial_id: str, result: dict) -> bool:
        return bool(self.monitor.should_stop())

    def stop_all(self) -> bool:
        return bool(self.monitor.should_stop())


def run_sweep(
    spec: Any,
    *,
    job_id: str,
    checkpoint_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    engine: Engine | None = None,
    trial_resources: dict[str, float] | None = None,
    report_interval_s: float = REPORT_INTERVAL_S,
    max_trial_failures: int = 0,
) -> dict[str, Any]:
    """Run the sweep of ``spec`` as Ray Tune trials and return the job's result.

    The result is the best trial's engine result plus ``trials`` (one row per grid point: index, config,
    status, heldout_accuracy, heldout_ci95, rule, error, wall_time_s, node_id, retries), ``best_trial`` (its
    index) and
    ``sweep`` (metric, mode, grid). Tune keeps its files under ``checkpoint_dir/tune`` (or a temporary folder,
    removed afterwards); each trial's engine checkpoints go to ``checkpoint_dir/trials/<seed=…_lr=…>``.
    Raises :class:`SweepFailed` when no trial succeeded and the sweep was not cancelled.
    """
    from discovery.spec import DiscoverySpec

    spec = spec if isinstance(spec, DiscoverySpec) else DiscoverySpec.model_validate(spec)
    grid = sweep_grid(spec.sweep)
    if not grid:
        raise ValueError("the spec has an empty sweep")
    stop = should_stop or (lambda: False)
    monitor = _Monitor(grid, spec.meta.episodes, stop)
    if on_progress is not None:
        on_progress(monitor.snapshot())

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
            base_spec=spec.model_dump(mode="json"),
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
            stop=_CancelStopper(monitor),
            callbacks=[_MonitorCallback(monitor, on_progress)],
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
    if on_progress is not None:
        on_progress(monitor.snapshot())
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
            return summary
        first = next((t for t in trials if t.get("error")), None)
        message = first["error"] if first else "no trial succeeded"
        detail = monitor.records[first["index"]].get("detail") if first else None
        raise SweepFailed(f"all {len(trials)} trial(s) failed; first: {message}", detail, summary)
    return {**monitor.results[best], "trials": trials, "best_trial": best, "sweep": sweep_info}
