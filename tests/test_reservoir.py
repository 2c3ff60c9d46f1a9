"""Tests of the reservoir motor learners (docs/science.md S5): task geometry, batching over seeds, FORCE on the
butterfly with a shortened protocol, and the lesion probe on a tiny configuration."""

from __future__ import annotations

import math

import pytest
import torch

from discovery.reservoir.model import (
    arm_position,
    block_diag_csr,
    butterfly,
    lesion_probe,
    lowpass,
    make_reservoir,
    run_reservoir,
    task_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_targets_and_arm_kinematics() -> None:
    f = butterfly(1000)
    assert f.shape == (1000, 2)
    assert 0.99 < float(f.norm(dim=-1).max()) < 1.01                    # normalised by 14.4734 ≈ max ρ
    lengths = torch.tensor([1.8, 1.8])
    assert torch.allclose(arm_position(torch.zeros(2), lengths), torch.tensor([0.0, 1.6]), atol=1e-6)
    assert torch.allclose(arm_position(torch.tensor([0.5, 0.0]), lengths), torch.tensor([3.6, -2.0]), atol=1e-6)
    assert torch.allclose(arm_position(torch.tensor([0.0, 1.0]), lengths), torch.tensor([0.0, -2.0]), atol=1e-6)
    cfg = task_config(3, "fixed")
    assert cfg.exp_lr == pytest.approx(5e-4 * 0.5 / 3) and cfg.theta == 1.5e-2
    assert task_config(3).exp_lr == pytest.approx(2.5e-4)


def test_reservoir_statistics_and_block_diagonal_product() -> None:
    J0, Q0, x0 = make_reservoir(0, 200, 2)
    frac = float((J0 != 0).float().mean())
    assert 0.09 < frac < 0.11
    assert float(J0[J0 != 0].std()) == pytest.approx(1.5 / math.sqrt(0.1 * 200), rel=0.05)
    assert float(Q0.abs().max()) <= 1 and float(x0.abs().max()) <= 0.5
    J1 = make_reservoir(1, 200, 2)[0]
    r = torch.randn(2, 200)
    out = torch.mv(block_diag_csr([J0, J1]), r.reshape(-1)).view(2, 200)
    assert torch.allclose(out, torch.stack([J0 @ r[0], J1 @ r[1]]), atol=1e-5)


def test_lowpass_matches_the_recursion() -> None:
    e = torch.rand(2, 2500, dtype=torch.float64)
    y = lowpass(e, 0.01, chunk=1024)
    ref = torch.empty_like(e)
    acc = e[:, 0].clone()
    for t in range(e.shape[1]):
        acc = acc + 0.01 * (e[:, t] - acc)
        ref[:, t] = acc
    assert torch.allclose(y, ref, atol=1e-12)


def test_force_draws_the_butterfly_with_a_shortened_protocol() -> None:
    res = run_reservoir(1, "force", [0, 1], periods_train=3, periods_test=1, period_steps=4000, N=300)
    assert len(res["deviation"]) == 2
    assert max(res["deviation"]) < 0.05, res["deviation"]
    assert res["n_satisfactory"] == 2 and res["steps_per_s"] > 0
    assert len(res["curves"]) == 2 and len(res["curves"][0]) >= 100


def test_seeds_are_independent_in_a_batch() -> None:
    kw = {"periods_train": 1, "periods_test": 1, "period_steps": 300, "N": 80}
    both = run_reservoir(2, "supertrex", [3, 4], **kw)["deviation"]
    one = run_reservoir(2, "supertrex", [4], **kw)["deviation"]
    assert both[1] == pytest.approx(one[0], rel=1e-3)


@pytest.mark.parametrize("task,learner,setting", [(1, "rmhl", "published"), (2, "rmhl", "published"),
                                                  (3, "supertrex", "published"), (3, "supertrex", "fixed")])
def test_learners_run_on_every_task(task: int, learner: str, setting: str) -> None:
    res = run_reservoir(task, learner, [0], periods_train=2, periods_test=1, period_steps=200, N=60,
                        setting=setting)
    assert all(math.isfinite(v) for v in res["deviation"])
    assert res["period_steps"] == 200 and res["setting"] == setting
    if learner == "supertrex":
        assert all(0.0 <= g <= 1.0 for g in res["gate_per_period"][0][:2])


def test_closed_loop_test_phase() -> None:
    kw = {"periods_train": 1, "periods_test": 1, "period_steps": 200, "N": 60}
    res = run_reservoir(2, "supertrex", [0], test_feedback="closed", **kw)
    assert math.isfinite(res["deviation"][0])
    with pytest.raises(ValueError):
        run_reservoir(1, "force", [0], test_feedback="open", **kw)


def test_force_is_rejected_on_arm_tasks() -> None:
    with pytest.raises(ValueError):
        run_reservoir(2, "force", [0], periods_train=1, periods_test=1, period_steps=50, N=30)


def test_lesion_probe_on_a_tiny_configuration() -> None:
    out = lesion_probe(1, [0, 1], early=1, periods_train=3, periods_test=1, period_steps=300, N=80)
    assert set(out["conditions"]) == {"intact", "lesion_early", "lesion_late"}
    assert out["late"] == 2
    for cond in out["conditions"].values():
        assert len(cond["test_deviation"]) == 2
        assert all(math.isfinite(v) for v in cond["test_deviation"] + cond["post_lesion_train_deviation"])
    with pytest.raises(ValueError):
        lesion_probe(1, [0], early=2, late=1, periods_train=3, periods_test=1, period_steps=50, N=30)


def test_reservoir_suite_is_registered_and_runs() -> None:
    from discovery.benchmarks.registry import get_suite, run_suite

    assert get_suite("reservoir-motor").protocol["period_steps"] == 50_000
    r = run_suite("reservoir-motor", None, tiny=True, overrides={
        "protocol": {"configs": [[1, "force", "published"], [3, "supertrex", "fixed"]], "period_steps": 100}})
    assert [e["learner"] for e in r["entries"]] == ["force task1", "supertrex task3 (fixed)"]
    assert r["higher_is_better"] is False and all(math.isfinite(e["score"]) for e in r["entries"])
