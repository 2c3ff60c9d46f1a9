"""Cached baselines and paired comparison in the engine (discovery.benchmarks.cache, .tuning, .progress) at tiny
size, and the database side (service.db.repositories.baselines) on SQLite and PostgreSQL. The Ray fan-out of the first tuning:
tests/test_workers_baselines.py."""

from __future__ import annotations

from typing import Any

import pytest

from discovery.benchmarks.cache import (
    BaselineKey,
    BaselineSet,
    compare,
    key_for,
    run_benchmark,
    tune_serial,
    verdict,
)
from discovery.benchmarks.progress import ProgressTracker
from discovery.benchmarks.registry import run_suite
from discovery.benchmarks.tuning import TuningPlan

RULE_A = "-0.01*e*x.T"
RULE_B = "-0.02*e*x.T + 0.01*e*e_pre.T"
VOLATILE = {"cost_per_sample_ms", "cost_per_step_ms", "wall_time_s"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def fa5_baselines() -> BaselineSet:
    return tune_serial("fa5-online", tiny=True, seed=0, threads=1)


# --- tuning plan -----------------------------------------------------------------------------------------------
def _run_plan(plan: TuningPlan, score: Any) -> None:
    while points := plan.next_points():
        plan.record([(score(hp), 0) for hp in points])


def test_grid_extends_past_an_edge_until_the_best_is_inside() -> None:
    plan = TuningPlan([[{"lr": v} for v in (0.01, 0.03, 0.1, 0.3)]])
    _run_plan(plan, lambda hp: -abs(hp["lr"] - 1.0))  # the optimum lr = 1 lies beyond the grid's top (0.3)
    report = plan.result()
    [ext] = report["extensions"]
    assert ext["hyperparameter"] == "lr" and ext["direction"] == "up"
    assert ext["values"] == [0.9, 2.7] and ext["stopped"] == "interior"  # 0.9 better, 2.7 worse: stop
    assert report["best"] == {"lr": 0.9} and report["best_on_grid_edge"] == []
    assert report["grid_points"] == 6 and report["planned_points"] == 4


def test_grid_extension_is_bounded() -> None:
    plan = TuningPlan([[{"lr": v} for v in (0.01, 0.03, 0.1, 0.3)]], max_extensions=2)
    _run_plan(plan, lambda hp: hp["lr"])  # always better upwards: stops after max_extensions or at the bound
    [ext] = plan.result()["extensions"]
    assert ext["values"] == [0.9, 2.7] and ext["stopped"] == "max_extensions"
    plan = TuningPlan([[{"lr": v} for v in (0.3, 1.0)]], bounds={"lr": (1e-4, 3.0)})
    _run_plan(plan, lambda hp: hp["lr"])
    [ext] = plan.result()["extensions"]
    assert ext["values"] == [3.0] and ext["stopped"] == "bound"
    plan = TuningPlan([[{"lr": v, "n": 5} for v in (0.1, 0.3)]], extend=False)
    _run_plan(plan, lambda hp: hp["lr"])
    assert plan.result()["grid_points"] == 2 and plan.result()["best_on_grid_edge"] == ["lr"]


def test_coordinate_stages_merge_onto_the_best_point() -> None:
    plan = TuningPlan([[{"lr": 0.1, "gamma": 0.001}, {"lr": 0.3, "gamma": 0.001}], [{"gamma": 0.01}]], extend=False)
    assert plan.next_points() == [{"lr": 0.1, "gamma": 0.001}, {"lr": 0.3, "gamma": 0.001}]
    plan.record([(0.5, 0), (0.4, 0)])
    assert plan.next_points() == [{"lr": 0.1, "gamma": 0.01}]
    with pytest.raises(ValueError):
        plan.record([])


# --- paired comparison -----------------------------------------------------------------------------------------
def test_verdict_reads_the_interval_in_the_suite_direction() -> None:
    assert verdict(0.004, 0.02) == "better" and verdict(-0.02, -0.004) == "worse"
    assert verdict(-0.01, 0.02) == "not distinguishable" and verdict(None, 0.1) == "not distinguishable"
    assert verdict(0.004, 0.02, higher_is_better=False) == "worse"
    assert verdict(-0.02, -0.004, higher_is_better=False) == "better"


def test_compare_pairs_episode_by_episode() -> None:
    base = [0.5, 0.6, 0.7, 0.8]
    rule = {"learner": "r", "per_episode": [b + 0.1 + 0.01 * (-1) ** i for i, b in enumerate(base)]}
    vs = compare(rule, [{"learner": "BP", "per_episode": base}, {"learner": "X", "per_episode": [0.1]}])
    assert set(vs) == {"BP"}  # different lengths are not paired
    assert vs["BP"].delta == pytest.approx(0.1) and vs["BP"].verdict == "better" and vs["BP"].n == 4
    lo, hi = vs["BP"].ci95
    assert lo < 0.1 < hi and hi - lo < 0.05  # paired: the between-episode spread of 0.1–0.3 cancels
    low = compare({"learner": "r", "metrics": {"deviation_per_seed": [0.1, 0.2, 0.15]}},
                  [{"learner": "b", "metrics": {"deviation_per_seed": [0.5, 0.6, 0.55]}}], higher_is_better=False)
    assert low["b"].verdict == "better" and low["b"].delta == pytest.approx(-0.4)


def test_progress_estimate_extrapolates_the_elapsed_time() -> None:
    now = [100.0]
    seen: list[dict[str, Any]] = []
    tracker = ProgressTracker(lambda e: seen.append(e.model_dump()), ["rule"], baselines="cached", clock=lambda: now[0])
    now[0] = 110.0
    tracker.on_suite_event({"stage": "score", "learner": "rule", "done": 50, "total": 200})
    assert seen[-1]["phase"] == "score" and seen[-1]["episode"] == 50 and seen[-1]["total"] == 200
    assert seen[-1]["elapsed"] == pytest.approx(10.0) and seen[-1]["remaining"] == pytest.approx(30.0)
    assert seen[-1]["learner_index"] == 1 and seen[-1]["learners"] == 1


# --- engine: cached = fresh -------------------------------------------------------------------------------------
def test_cached_baselines_give_the_numbers_of_a_fresh_run(fa5_baselines: BaselineSet) -> None:
    fresh = run_suite("fa5-online", RULE_A, tiny=True, seed=0, threads=1)
    events: list[dict[str, Any]] = []
    cached = run_benchmark("fa5-online", RULE_A, tiny=True, seed=0, baselines=fa5_baselines, threads=1,
                           progress=lambda e: events.append(e.model_dump())).to_json()
    assert cached["baselines"] == "cached" and "baseline_set" not in cached
    plain = [{k: v for k, v in e.items() if k != "vs"} for e in cached["entries"]]
    for e in plain:
        e["metrics"] = {k: v for k, v in e["metrics"].items() if k != "vs"}
    assert _strip(plain) == _strip(fresh["entries"])  # every baseline and the rule, per episode
    assert {e["phase"] for e in events} == {"score"} and {e["learner"] for e in events} == {"rule"}  # no tuning
    rule = cached["entries"][-1]
    assert rule["kind"] == "rule" and set(rule["vs"]) == {e["learner"] for e in fresh["entries"][:-1]}
    assert cached["vs"] == rule["vs"] == rule["metrics"]["vs"]
    bp = cached["vs"]["BP"]
    assert bp["n"] == len(rule["per_episode"]) and bp["ci95"][0] <= bp["delta"] <= bp["ci95"][1]
    assert bp["verdict"] in ("better", "worse", "not distinguishable")


def test_a_second_rule_reuses_the_baselines(fa5_baselines: BaselineSet) -> None:
    def no_tuning(*args: Any, **kwargs: Any) -> BaselineSet:
        raise AssertionError("a cached benchmark must not tune")

    report = run_benchmark("fa5-online", RULE_B, tiny=True, seed=0, baselines=fa5_baselines, tune=no_tuning,
                           threads=1).to_json()
    baselines = [e for e in report["entries"] if e["kind"] == "baseline"]
    assert baselines == fa5_baselines.entries  # the very entries, costs included: nothing re-ran
    assert report["vs"] and all(v["n"] == 6 for v in report["vs"].values())


def test_suite_version_is_part_of_the_key() -> None:
    key = key_for("fa5-online", tiny=True, seed=3)
    assert key == BaselineKey(suite="fa5-online", version="1.0", seed=3, tiny=True)


def test_a_lower_is_better_suite_takes_the_same_path() -> None:
    events: list[dict[str, Any]] = []
    report = run_benchmark("fixedpoint-linear", None, tiny=True, seed=0, progress=lambda e: events.append(e.model_dump())).to_json()
    assert report["baselines"] == "tuned" and report["higher_is_better"] is False
    fractions = [e["fraction"] for e in events]
    assert events and fractions == sorted(fractions) and {e["phase"] for e in events} == {"score"}
    cached = BaselineSet.model_validate(report["baseline_set"])
    assert cached.higher_is_better is False and [e["learner"] for e in cached.entries] == ["dW1", "dW2", "dW3"]
    again = run_benchmark("fixedpoint-linear", "0.1*dW3", tiny=True, seed=0, baselines=cached).to_json()
    assert again["baselines"] == "cached" and again["entries"][:-1] == cached.entries and again["vs"] == {}
    # the given recurrent rule runs (issue #23): dW3 alone, normalized to θ = 1, is the published dW3 exactly
    rule = again["entries"][-1]
    dw3 = next(e for e in cached.entries if e["learner"] == "dW3")
    assert rule["kind"] == "rule" and rule["score"] == pytest.approx(dw3["score"], rel=1e-9)
    assert rule["metrics"]["best_eta"] == dw3["metrics"]["best_eta"]


# --- the database side ------------------------------------------------------------------------------------------
def test_cache_rows_by_key_and_version(settings: Any, fa5_baselines: BaselineSet) -> None:
    from discovery.benchmarks.cache import split_baseline_set
    from discovery.benchmarks.report import BenchmarkReport
    from service.db.migrate import upgrade
    from service.db.models import BaselineSetRow, BenchmarkRun
    from service.db.repositories import baselines as benchmark_cache
    from service.db.session import make_engine, make_session_factory, session_scope

    engine = make_engine(settings.database_url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    try:
        with session_scope(sessions) as s:
            run = BenchmarkRun(suite="fa5-online", tiny=True, seed=0, owner="t", status="succeeded", attempts=1)
            s.add(run)
            s.flush()
            assert benchmark_cache.cached_for(s, run) is None  # nothing cached
            report = BenchmarkReport(suite="fa5-online", entries=[], baseline_set=fa5_baselines.model_dump())
            rest, tuned = split_baseline_set(report)
            assert rest.to_json() == {"suite": "fa5-online", "entries": []} and tuned == fa5_baselines
            old = fa5_baselines.model_copy(update={"key": fa5_baselines.key.model_copy(update={"version": "0.9"})})
            benchmark_cache.store(s, old, None)
            benchmark_cache.store(s, fa5_baselines, run.id)  # the same key again: replaced, not duplicated
            assert s.query(BaselineSetRow).count() == 2
            assert benchmark_cache.cached_for(s, run) == fa5_baselines  # the current version's set
            run.retune = True
            assert benchmark_cache.cached_for(s, run) is None
            assert benchmark_cache.cached_for(s, BenchmarkRun(suite="fa5-online", tiny=True, seed=1)) is None
    finally:
        engine.dispose()


def test_a_cold_key_tuned_by_another_run_waits(settings: Any, fa5_baselines: BaselineSet) -> None:
    from service.db.migrate import upgrade
    from service.db.models import BenchmarkRun
    from service.db.repositories import baselines as benchmark_cache
    from service.db.session import make_engine, make_session_factory, session_scope

    engine = make_engine(settings.database_url)
    upgrade(engine)
    try:
        with session_scope(make_session_factory(engine)) as s:
            runs = [BenchmarkRun(suite="fa5-online", tiny=True, seed=seed, owner="t", status="queued", attempts=0)
                    for seed in (0, 0, 1)]
            s.add_all(runs)
            s.flush()
            tuning, same, other = runs
            assert benchmark_cache.waits_for_tuning(s, same, [tuning.id])  # the first run tunes seed 0 now
            assert not benchmark_cache.waits_for_tuning(s, other, [tuning.id])  # another key
            assert not benchmark_cache.waits_for_tuning(s, same, [])  # nobody tunes it: go and tune
            same.retune = True
            assert not benchmark_cache.waits_for_tuning(s, same, [tuning.id])
            same.retune = False
            benchmark_cache.store(s, fa5_baselines, tuning.id)
            assert not benchmark_cache.waits_for_tuning(s, same, [tuning.id])  # cached: submit with the cache
    finally:
        engine.dispose()


def test_a_recurrent_rule_is_paired_with_the_recurrent_baselines() -> None:
    from rules.recurrent import parse_rule_text

    rule = parse_rule_text("0.25*dW3 + 0.001*oja")
    first = run_benchmark("fixedpoint-mnist", rule, tiny=True, seed=0, threads=1).to_json()
    cached = BaselineSet.model_validate(first["baseline_set"])
    again = run_benchmark("fixedpoint-mnist", rule, tiny=True, seed=0, baselines=cached, threads=1).to_json()
    assert again["baselines"] == "cached" and set(again["vs"]) == {"dW1", "dW3", "dW4"}
    mine = [e for e in again["entries"] if e["kind"] == "rule"]
    assert len(mine) == 1 and mine[0]["score"] == first["entries"][-1]["score"]  # the rule's numbers: same seed
    n = len(mine[0]["metrics"]["per_episode_accuracy"])
    assert all(v["n"] == n for v in again["vs"].values())
