"""The first tuning of a suite's baselines as parallel Ray tasks, and the benchmark job that uses it.

For the few-shot suites (runner ``discovery.benchmarks.fewshot.fewshot_runner``: fa5-online, emnist-5way) every
baseline's :class:`~discovery.benchmarks.tuning.TuningPlan` is run with one Ray task per hyperparameter point:
all baselines' stage-0 points start at once; a baseline's next round (its stage 1, then grid extensions) starts
as soon as its own round is in, and its held-out scoring is one more task once its plan is done. Each task takes
one CPU and one torch thread; the plan records measurements in plan order, so the chosen points are those of the
serial tuning (``fewshot.tune_baseline``). Other suites tune in one task (``discovery.benchmarks.cache.tune_serial``).

Progress: fraction f = (work done) / (work planned), in units of one tuning point's episodes; scoring a
baseline counts episodes / tune_episodes units; extension points add to both sides as they are planned.
Cancel: ``should_stop()`` is checked every ``POLL_S``; the tasks in flight are cancelled (``ray.cancel``,
force) and :class:`BenchmarkCancelled` is raised.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import ray

from discovery.benchmarks.cache import BaselineSet, key_for, run_benchmark, tune_serial
from discovery.benchmarks.progress import BenchmarkProgress, ProgressTracker
from discovery.benchmarks.report import BenchmarkReport
from rules.base import CoefficientRule
from workers.contract import BenchmarkTask

#: Seconds between looks at the tasks in flight (and at the cancel flag).
POLL_S = 0.5


class BenchmarkCancelled(RuntimeError):
    """The benchmark was cancelled while its baselines were being tuned."""


@functools.lru_cache(maxsize=4)
def _setup(suite: str, tiny: bool, seed: int, device: str) -> Any:
    """The few-shot setup (data set, samplers), loaded once per worker process."""
    from discovery.benchmarks.fewshot import fewshot_setup
    from discovery.benchmarks.registry import get_suite

    return fewshot_setup(get_suite(suite).resolved(tiny), seed, device)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@ray.remote(num_cpus=1)
def point_task(suite: str, tiny: bool, seed: int, device: str, baseline: str,
               hp: dict[str, Any]) -> tuple[float, int]:
    """(mean meta-train accuracy, diverged episodes) of one grid point (``fewshot.evaluate_point``)."""
    from discovery.benchmarks.fewshot import evaluate_point

    _one_thread()
    return evaluate_point(_setup(suite, tiny, seed, device), baseline, hp)


@ray.remote(num_cpus=1)
def score_task(suite: str, tiny: bool, seed: int, device: str, baseline: str,
               tuning: dict[str, Any]) -> dict[str, Any]:
    """The held-out entry of a tuned baseline (``fewshot.score_baseline``), JSON-able."""
    from discovery.benchmarks.fewshot import score_baseline
    from discovery.results import jsonable

    _one_thread()
    return jsonable(score_baseline(_setup(suite, tiny, seed, device), baseline, tuning))


@ray.remote(num_cpus=1)
def serial_task(suite: str, tiny: bool, seed: int, device: str) -> dict[str, Any]:
    """All baselines of a suite without a fan-out (``cache.tune_serial``), as a dumped BaselineSet."""
    return tune_serial(suite, tiny=tiny, seed=seed, device=device, threads=1).model_dump()


def fans_out(suite: str) -> bool:
    """Whether the suite's baselines are tuned point by point (the few-shot runner)."""
    from discovery.benchmarks.fewshot import fewshot_runner
    from discovery.benchmarks.registry import get_suite

    return get_suite(suite).runner is fewshot_runner


def _wait(refs: list[Any], should_stop: Callable[[], bool] | None) -> list[Any]:
    """The refs of ``refs`` that are done (at least one), cancelling everything when ``should_stop()``."""
    while True:
        if should_stop is not None and should_stop():
            for ref in refs:
                ray.cancel(ref, force=True)
            raise BenchmarkCancelled("cancelled while tuning the baselines")
        ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_S)
        if ready:
            more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            return list(more)


def tune_fanout(suite: str, *, tiny: bool, seed: int, progress: Callable[[BenchmarkProgress], None] | None = None,
                device: str = "cpu", should_stop: Callable[[], bool] | None = None) -> BaselineSet:
    """Tune and score every baseline of ``suite`` as Ray tasks (see the module docstring)."""
    from discovery.baselines.learners import BASELINES
    from discovery.benchmarks.fewshot import tuning_report
    from discovery.benchmarks.registry import get_suite
    from discovery.benchmarks.tuning import TuningPlan

    t0 = time.perf_counter()
    definition = get_suite(suite).resolved(tiny)
    names = list(definition.baselines)
    tracker = ProgressTracker(progress, names)
    args = (suite, bool(tiny), int(seed), str(device))
    gpu = {"num_gpus": 1} if str(device).startswith("cuda") else {}
    if not fans_out(suite):
        tracker.report("tune", None, 0, len(names), 0.0)
        ref = serial_task.options(**gpu).remote(*args)
        _wait([ref], should_stop)
        out = BaselineSet.model_validate(ray.get(ref))
        tracker.report("score", None, len(names), len(names), 1.0)
        return out
    prot = definition.protocol
    score_units = float(prot["episodes"]) / max(float(prot["tune_episodes"]), 1.0)
    plans = {b: TuningPlan(BASELINES[b].stages) for b in names}
    planned = {b: plans[b].planned_points for b in names}
    inflight: dict[Any, tuple[str, int | None]] = {}  # ref → (baseline, point index in its round | None = score)
    results: dict[str, list[Any]] = {}
    entries: dict[str, dict[str, Any]] = {}
    units_done = 0.0

    def submit_round(b: str) -> None:
        points = plans[b].next_points()
        if points:
            results[b] = [None] * len(points)
            planned[b] = max(planned[b], len(plans[b].table) + len(points))
            for i, hp in enumerate(points):
                inflight[point_task.options(**gpu).remote(*args, b, hp)] = (b, i)
        else:
            report = tuning_report(definition, plans[b])
            inflight[score_task.options(**gpu).remote(*args, b, report)] = (b, None)

    for b in names:
        submit_round(b)
    while inflight:
        for ref in _wait(list(inflight), should_stop):
            b, i = inflight.pop(ref)
            value = ray.get(ref)
            if i is None:
                entries[b] = value
                units_done += score_units
            else:
                results[b][i] = value
                units_done += 1
                if all(r is not None for r in results[b]):
                    plans[b].record(results[b])
                    submit_round(b)
            all_units = sum(planned.values()) + score_units * len(names)
            tracker.report("tune" if i is not None else "score", b, len(plans[b].table), planned[b],
                           units_done / all_units)
    key = key_for(suite, tiny=tiny, seed=seed)
    return BaselineSet(key=key, metric=str(getattr(definition, "metric", "accuracy")),
                       higher_is_better=bool(getattr(definition, "higher_is_better", True)),
                       entries=[entries[b] for b in names], tuned_with="fan-out",
                       wall_time_s=time.perf_counter() - t0)


def run_benchmark_job(task: BenchmarkTask, rule: CoefficientRule | None,
                      progress: Callable[[BenchmarkProgress], None],
                      should_stop: Callable[[], bool]) -> BenchmarkReport:
    """A benchmark job in its actor: the rule against the task's cached ``baselines``, or against baselines tuned
    now by :func:`tune_fanout` (then in the report as ``baseline_set`` for the service to cache)."""

    def tune(suite: str, **kw: object) -> BaselineSet:
        return tune_fanout(suite, should_stop=should_stop, **kw)  # type: ignore[arg-type]

    return run_benchmark(task.suite, rule, tiny=task.tiny, seed=task.seed, baselines=task.baselines, tune=tune,
                         progress=progress, device=task.device or "cpu", threads=1)
