"""Tests of workers/: discovery, sweep and benchmark jobs on a real local Ray (2 CPUs), submit/poll/cancel.

The jobs meta-learn θ of ΔW_ℓ = Σ_r θ_r F^r_ℓ (docs/science.md) with the real engine on tiny synthetic episodes;
a few cases (death of a worker, retries, benchmark plumbing) use stand-in engines so that they stay fast.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from discovery.benchmarks.report import BenchmarkReport
from discovery.results import DiscoveryResult, ProgressEvent, RuleData, jsonable
from discovery.spec import DiscoverySpec, SweepSpec
from workers import (
    JobState,
    cancel,
    ensure_ray,
    poll,
    spec_resources,
    submit_benchmark,
    submit_discovery,
    wait,
)
from workers.progress import JobResult, job_progress, short_error
from workers.sweep import apply_overrides, sweep_grid, trial_key

JOB_TIMEOUT_S = 90


def tiny_spec(**overrides: Any) -> DiscoverySpec:
    """A spec that meta-trains in about a second: synthetic 784-D data, widths 784-16-8-5, 5-way 2-shot."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "network": {"widths": [784, 16, 8, 5], "feedback": "fa"},
        "task": {"dataset": "synthetic", "ways": 5, "shots": 2, "queries": 2},
        "rule": {"pool": "paper3"},
        "meta": {"episodes": 4, "meta_batch": 1, "lr": 1e-3, "eval_episodes": 4, "checkpoint_every": 2},
        "resources": {"device": "cpu", "num_cpus": 1},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return DiscoverySpec.model_validate(spec)


# --- stand-in engines (closures, so that cloudpickle ships them by value into the workers) -------------------
def make_fake_engine(episodes_delay: float = 0.0, crash_after: int | None = None,
                     crash_seed: int | None = None) -> Any:
    """An engine with discover's signature: emits progress per episode, honours should_stop, may crash.

    ``crash_after``: the process exits after that many episodes (every seed, or only ``crash_seed`` if given).

    Its held-out accuracy is 0.1·(seed + 1), so the best trial of a seed sweep is the largest seed that works.
    """

    def fake_discover(spec, progress=None, checkpoint_dir=None, should_stop=None):
        import os as _os

        theta = {t: 0.0 for t in spec.rule.terms}
        done = 0
        for episode in range(1, spec.meta.episodes + 1):
            if should_stop is not None and should_stop():
                break
            if crash_after is not None and episode > crash_after and crash_seed in (None, spec.meta.seed):
                _os._exit(3)  # the worker process dies: node lost / killed
            time.sleep(episodes_delay)
            theta = {t: 0.01 * episode * (spec.meta.seed + 1) for t in spec.rule.terms}
            if progress is not None:
                progress(ProgressEvent(episode=episode, total=spec.meta.episodes, meta_loss=1.0 / episode,
                                       meta_accuracy=0.2 + 0.01 * episode, theta=theta, alignment_deg=[45.0],
                                       subspace_orth_error=[0.1], skipped=False))
            done = episode
        if checkpoint_dir is not None:
            (checkpoint_dir / "fake.txt").write_text(str(done))
        return DiscoveryResult(
            rule=RuleData(expression="fake", coefficients=theta), theta=theta, theta_history=[theta],
            history=[ProgressEvent(episode=done, total=spec.meta.episodes, meta_loss=None, meta_accuracy=0.5,
                                   theta=theta)],
            heldout_accuracy=0.1 * (spec.meta.seed + 1), heldout_ci95=0.01, heldout_episodes=1,
            diverged_episodes=0, skipped_steps=0, wall_time_s=0.0, device="cpu", spec=spec)

    return fake_discover


def make_fake_suite() -> Any:
    """A run_suite stand-in: echoes its arguments, reports one progress event."""

    def fake_run_suite(name, rule, *, tiny=False, seed=0, progress=None):
        if progress is not None:
            progress({"learner": "rule", "done": 1, "total": 1})
        return BenchmarkReport(suite=name, tiny=tiny, seed=seed, notes=[str(rule)],
                               entries=[{"learner": "bp", "score": 0.9, "ci95": [0.89, 0.91]}])

    return fake_run_suite


# --- pure helpers (no Ray) --------------------------------------------------------------------------------------
def test_job_progress_reads_any_event_shape() -> None:
    ev = SimpleNamespace(episode=3, total=9, meta_loss=float("nan"), meta_accuracy=0.5, theta={"F0": 1e-3},
                         alignment_deg=(10.0, float("inf")), subspace_orth_error=[0.1], skipped=False, _private=1)
    d = jsonable(job_progress(ev).model_dump(exclude_unset=True))
    assert d["episode"] == 3 and d["meta_loss"] is None and d["alignment_deg"] == [10.0, None]
    assert "_private" not in d
    assert job_progress(ProgressEvent(episode=1, total=2, meta_loss=None, meta_accuracy=None, theta={})).episode == 1
    assert job_progress(SimpleNamespace(episode=2), kind="sweep").model_dump(exclude_unset=True) == {
        "episode": 2, "kind": "sweep"}
    assert jsonable({"p": Path("/a"), "s": {1}}) == {"p": "/a", "s": [1]}


def test_short_error_is_one_short_line() -> None:
    msg = short_error(ValueError("first line\n" + "x" * 5000))
    assert msg.startswith("ValueError: first line") and "\n" not in msg and len(msg) <= 500


def test_sweep_grid_and_overrides() -> None:
    grid = sweep_grid(SweepSpec(seeds=[0, 1, 1], lr=[0.1, 0.01]))
    assert grid == [{"seed": 0, "lr": 0.1}, {"seed": 0, "lr": 0.01}, {"seed": 1, "lr": 0.1}, {"seed": 1, "lr": 0.01}]
    assert sweep_grid(SweepSpec()) == []
    spec = apply_overrides(tiny_spec(sweep={"seeds": [0, 1]}), {"seed": 7, "l1": 0.5})
    assert spec.meta.seed == 7 and spec.meta.l1 == 0.5 and spec.sweep.is_empty()
    assert trial_key({"seed": 1, "lr": 0.01}) == "seed=1_lr=0.01"


def test_spec_resources_gpu_awareness() -> None:

    def res(**r: Any) -> dict[str, float]:
        return spec_resources(tiny_spec(resources=r))

    assert res(device="cpu", num_cpus=2) == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert res(device="cuda")["num_gpus"] == 1.0
    assert res(device="auto", num_gpus=0.5)["num_gpus"] == 0.5
    assert res(device="auto")["num_gpus"] == 0.0


# --- real Ray ---------------------------------------------------------------------------------------------------
def _wait_all(handle, timeout: float = JOB_TIMEOUT_S) -> tuple[JobState, list[JobState]]:
    """Poll every 0.1 s until the job ends; return the final state and every state seen."""
    seen: list[JobState] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = poll(handle)
        seen.append(state)
        if state.done:
            return state, seen
        time.sleep(0.1)
    raise AssertionError(f"job {handle.job_id} did not end in {timeout}s; last state {seen[-1]}")


def test_ensure_ray_is_idempotent(ray_local) -> None:
    first = ensure_ray()
    assert ensure_ray(num_cpus=8) == first
    assert ray.cluster_resources()["CPU"] == 2


def test_discovery_job_succeeds_with_progress(ray_local, tmp_path: Path) -> None:
    handle = submit_discovery("d1", tiny_spec(), tmp_path / "ckpt")
    assert poll(handle).status in ("queued", "running")
    final, seen = _wait_all(handle)
    assert final.status == "succeeded", final
    assert isinstance(final.result, JobResult)
    rule = final.result.rule
    assert rule.expression and rule.hash and set(rule.coefficients) <= {"F0", "F2", "F9"}
    assert final.result.heldout_accuracy is not None and 0.0 <= final.result.heldout_accuracy <= 1.0
    assert len(final.result.history) == 4
    assert final.progress is not None and final.progress.episode == 4 and final.progress.total == 4
    assert final.progress.theta is not None and "meta_accuracy" in final.progress.model_fields_set
    assert any(s.status == "running" for s in seen)
    assert (tmp_path / "ckpt").is_dir() and any((tmp_path / "ckpt").iterdir())
    assert poll(handle) is final  # final answers are stable
    # the actor was freed: both CPUs are back
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2


def test_cancel_long_job_is_quick(ray_local) -> None:
    handle = submit_discovery("d2", tiny_spec(meta={"episodes": 100_000}))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:  # wait until it really meta-trains
        state = poll(handle)
        if state.progress and (state.progress.episode or 0) >= 2:
            break
        assert not state.done, state
        time.sleep(0.1)
    t0 = time.monotonic()
    cancel(handle)
    cancel(handle)  # idempotent
    final, _ = _wait_all(handle, timeout=30)
    elapsed = time.monotonic() - t0
    assert final.status == "cancelled", final
    assert elapsed < 8, f"cancel took {elapsed:.1f}s"
    assert final.progress.episode < 100_000


def test_cancel_queued_job_kills_at_once(ray_local) -> None:
    handle = submit_discovery("d3", tiny_spec(meta={"episodes": 100_000}))
    cancel(handle)
    final, _ = _wait_all(handle, timeout=15)
    assert final.status == "cancelled"


def test_failing_engine_gives_short_error(ray_local, monkeypatch) -> None:
    monkeypatch.delenv("PLASTICITY_EMNIST_DIR", raising=False)
    spec = tiny_spec(network={"widths": [784, 16, 8, 5]}, task={"dataset": "emnist-balanced", "emnist_dir": None})
    handle = submit_discovery("d4", spec)
    final, _ = _wait_all(handle)
    assert final.status == "failed"
    assert "EMNIST" in final.error and len(final.error) <= 500 and "\n" not in final.error
    assert final.detail and "Traceback" not in final.error
    assert final.result is None


def test_gpu_job_without_gpu_fails_fast(ray_local) -> None:
    if ray.cluster_resources().get("GPU", 0) > 0:
        pytest.skip("this machine has a GPU")
    handle = submit_discovery("d5", tiny_spec(resources={"device": "cuda"}))
    final = poll(handle)
    assert final.status == "failed" and "GPU" in final.error


def test_dead_worker_fails_with_reason(ray_local) -> None:
    spec = tiny_spec(meta={"episodes": 3})
    handle = submit_discovery("d6", spec, engine=make_fake_engine(crash_after=1))
    final, _ = _wait_all(handle)
    assert final.status == "failed" and "died" in final.error, final

    handle = submit_discovery("d7", tiny_spec(meta={"episodes": 1000}), engine=make_fake_engine(0.05))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not getattr(poll(handle).progress, "episode", None):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ray.kill(handle.actor)  # as if its node were lost
    final, _ = _wait_all(handle)
    assert final.status == "failed" and "killed" in final.error, final


def test_retry_after_worker_death(ray_local, tmp_path: Path) -> None:
    # the first attempt dies after one episode; the retry (same engine, same flag file) runs to the end
    flag = tmp_path / "crashed"

    def engine(spec, progress=None, checkpoint_dir=None, should_stop=None):
        if not flag.exists():
            flag.write_text("1")
            os._exit(3)
        return make_fake_engine()(spec, progress, checkpoint_dir, should_stop)

    handle = submit_discovery("d8", tiny_spec(meta={"episodes": 2}), tmp_path / "c", max_retries=1, engine=engine)
    final, seen = _wait_all(handle)
    assert final.status == "succeeded", final
    assert handle.attempt == 2
    assert any(getattr(s.progress, "retry", None) == 1 for s in seen)


def test_sweep_over_two_seeds(ray_local, tmp_path: Path) -> None:
    spec = tiny_spec(sweep={"seeds": [0, 1]}, meta={"episodes": 3, "eval_episodes": 8})
    handle = submit_discovery("s1", spec, tmp_path / "sweep")
    assert handle.kind == "sweep"
    final, seen = _wait_all(handle, timeout=120)
    assert final.status == "succeeded", final
    trials = final.result.trials
    assert [t.config for t in trials] == [{"seed": 0}, {"seed": 1}]
    assert all(t.status == "succeeded" and t.rule["expression"] for t in trials)
    accs = [t.heldout_accuracy for t in trials]
    best = max(range(2), key=lambda i: (accs[i], -i))
    assert final.result.best_trial == best
    assert final.result.heldout_accuracy == accs[best]
    assert final.result.rule.model_dump() == trials[best].rule
    assert final.result.spec.meta.seed == best
    assert final.progress.kind == "sweep" and final.progress.trials_done == 2
    assert any(getattr(s.progress, "trials_total", None) == 2 for s in seen)
    assert (tmp_path / "sweep" / "trials" / "seed=0").is_dir()
    assert math.isfinite(final.result.sweep["trials_succeeded"])


def test_sweep_best_trial_and_failed_trial(ray_local) -> None:
    # seed 2's trial process dies half-way (the engine raising is covered by test_sweep_all_trials_fail)
    spec = tiny_spec(sweep={"seeds": [0, 1, 2]}, meta={"episodes": 3})
    final, _ = _wait_all(submit_discovery("s0", spec, engine=make_fake_engine(crash_after=1, crash_seed=2)))
    assert final.status == "succeeded", final
    trials = final.result.trials
    assert [t.status for t in trials] == ["succeeded", "succeeded", "failed"]
    assert "died" in trials[2].metrics()["error"] and "\n" not in trials[2].metrics()["error"]
    assert [t.heldout_accuracy for t in trials[:2]] == pytest.approx([0.1, 0.2])
    assert final.result.best_trial == 1 and final.result.heldout_accuracy == pytest.approx(0.2)
    assert final.progress.best_config == {"seed": 1} and final.progress.trials_failed == 1


def test_sweep_cancel(ray_local) -> None:
    # fake engine: seeds 0 and 1 with a slow engine, cancelled mid-way
    spec = tiny_spec(sweep={"seeds": [0, 1]}, meta={"episodes": 10_000})
    handle = submit_discovery("s2", spec, engine=make_fake_engine(0.02))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (getattr(poll(handle).progress, "episode", None) or 0) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    t0 = time.monotonic()
    cancel(handle)
    final, _ = _wait_all(handle, timeout=30)
    assert final.status == "cancelled" and time.monotonic() - t0 < 12


def test_sweep_all_trials_fail(ray_local, monkeypatch) -> None:
    monkeypatch.delenv("PLASTICITY_EMNIST_DIR", raising=False)
    spec = tiny_spec(sweep={"lr": [0.01]}, task={"dataset": "emnist-balanced"})
    final, _ = _wait_all(submit_discovery("s3", spec), timeout=120)
    assert final.status == "failed" and "EMNIST" in final.error and "\n" not in final.error
    assert [t.status for t in final.trials] == ["failed"]
    assert final.trials[0].config == {"lr": 0.01}


def test_benchmark_job_real_suite(ray_local) -> None:
    suites = pytest.importorskip("discovery.benchmarks.registry")
    if "fa5-online" not in suites.SUITES:
        pytest.skip("fa5-online is not registered")
    # a real (tiny) suite: tuning 9 baselines takes ~30 s on an idle 2-core machine, minutes on a loaded one
    final, seen = _wait_all(submit_benchmark("b0", "fa5-online", "-0.01*e*x.T", tiny=True), timeout=300)
    assert final.status == "succeeded", final
    learners = {e.learner for e in final.result.entries}
    assert "rule" in learners and "BP" in learners
    assert final.result.suite == "fa5-online" and final.result.tiny is True
    assert any(s.progress for s in seen)


def test_benchmark_job_plumbing(ray_local) -> None:
    handle = submit_benchmark("b1", "tiny-suite", None, tiny=True, seed=3, engine=make_fake_suite())
    final, _ = _wait_all(handle)
    assert final.status == "succeeded", final
    assert final.result.suite == "tiny-suite" and final.result.tiny is True and final.result.seed == 3
    assert final.result.notes == ["None"] and final.result.entries[0].score == 0.9
    assert final.progress.learner == "rule" and final.progress.episode == 1 and final.progress.total == 1

    bad = wait(submit_benchmark("b00", "fa5-online", "e*x.T +* )", engine=make_fake_suite()), timeout=JOB_TIMEOUT_S)
    assert bad.status == "failed" and bad.error.startswith("RuleSyntaxError") and "\n" not in bad.error


def test_handle_pickles_while_ray_is_up(ray_local) -> None:
    from ray import cloudpickle

    handle = submit_benchmark("b2", "tiny-suite", None, engine=make_fake_suite())
    clone = cloudpickle.loads(cloudpickle.dumps(handle))
    assert clone.job_id == "b2" and clone._lock is not None
    assert wait(handle, timeout=JOB_TIMEOUT_S).status == "succeeded"
    assert pickle.dumps(JobState(status="queued"))


def test_final_progress_falls_back_to_the_result_history() -> None:
    """A job that ends before any look at its progress still reports its last event (from the result)."""
    from workers.ray_jobs import _last_history_event

    spec = tiny_spec()
    events = [ProgressEvent(episode=i, total=2, meta_loss=None, meta_accuracy=0.5, theta={}) for i in (1, 2)]
    result = JobResult(rule=RuleData(expression="0", coefficients={}), theta={}, history=events, theta_history=[],
                       heldout_accuracy=None, heldout_ci95=None, heldout_episodes=0, diverged_episodes=0,
                       skipped_steps=0, wall_time_s=0.0, device="cpu", spec=spec)
    last = _last_history_event(result)
    assert last is not None and last.episode == 2 and last.total == 2
    assert _last_history_event(result.model_copy(update={"history": []})) is None
    assert _last_history_event(None) is None
