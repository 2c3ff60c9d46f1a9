"""What watches a sweep's Ray Tune run (workers.sweep): the monitor that aggregates trial progress and outcomes,
the Tune callback that feeds it, and the stopper that ends every trial once the job is cancelled."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from workers.progress import (
    describe_ray_error,
    one_line,
    tail_text,
)

#: the metric that ranks trials (higher is better)
METRIC = "heldout_accuracy"
log = logging.getLogger("workers.sweep")


def trial_score(record: dict[str, Any]) -> float:
    """Ranking value of a finished trial: held-out accuracy, else its last meta accuracy, else −∞."""
    value = record.get(METRIC)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    value = record.get("final_meta_accuracy")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return -math.inf


class Monitor:
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
        return max(done, key=lambda r: (trial_score(r), -r["index"]))["index"]

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


class MonitorCallback(tune.Callback):
    """Forwards trial results and errors to the monitor and pushes a fresh snapshot to ``on_progress``."""

    def __init__(self, monitor: Monitor, on_progress: Callable[[dict[str, Any]], None] | None):
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


class CancelStopper(tune.Stopper):
    """Stops every trial once the job is cancelled."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor

    def __call__(self, trial_id: str, result: dict) -> bool:
        return bool(self.monitor.should_stop())

    def stop_all(self) -> bool:
        return bool(self.monitor.should_stop())
