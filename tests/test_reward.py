"""The reward (three-factor) family: the generated library and its whitelist text, the batched reservoir (the
library's RMHL term equals the seed's RMHL), divergence handling, the CMA-ES forward search at tiny size, the spec
and goal, the registry, and the reservoir-motor suite scoring a reward rule beside the tuned learners."""

from __future__ import annotations

import re

import pytest
import torch

from rules.parser import RuleSyntaxError
from rules.reward import REWARD_POOLS, REWARD_TERMS, RMHL, RewardRule, parse_reward, reward_term

TINY = {"N": 40, "periods_train": 2, "periods_test": 1, "period_steps": 200}


def test_the_library_is_generated_with_stable_ids_and_rmhl_named() -> None:
    assert len(REWARD_TERMS) == 24 and len(REWARD_POOLS["reward"]) == 18
    assert all(re.fullmatch(r"M[0-9a-f]{8}", t) for t in REWARD_TERMS)
    assert reward_term("rmhl").id == RMHL and RMHL in REWARD_POOLS["reward"]
    t = REWARD_TERMS[RMHL]
    assert (t.third, t.post, t.pre) == ("rpe", "fluct", "r") and t.formula == "(R − R̄) (z − z̄) rᵀ"
    assert not any(REWARD_TERMS[k].supervised for k in REWARD_POOLS["reward"])
    assert len({str(t.expr) for t in REWARD_TERMS.values()}) == 24          # deduplicated


def test_reward_text_round_trips_and_refuses_everything_else() -> None:
    rule = parse_reward("0.0025*rmhl - 2*1e-5*rew_z_r + rmhl*0.5")
    assert rule.coefficients[RMHL] == pytest.approx(0.5025)
    again = parse_reward(rule.canonical())
    assert again == rule and again.hash() == rule.hash() and RewardRule.from_canonical(rule.canonical()) == rule
    assert rule.to_dict()["family"] == "reward" and rule.canonical().startswith("reward/v1: ")
    for bad in ("x*y.T", "__import__('os')", "rmhl*rmhl", "rmhl +", "reward/v9: rmhl", "open(rmhl)", "2*"):
        with pytest.raises(RuleSyntaxError):
            parse_reward(bad)


def test_the_library_rmhl_term_is_the_seeds_rmhl_on_the_arm() -> None:
    from discovery.reservoir.model import run_reservoir
    from discovery.reward.sim import RewardEnv, simulate

    ref = run_reservoir(2, "rmhl", [0, 1], 2, 1, 300, N=40)
    env = RewardEnv(task=2, **TINY | {"period_steps": 300})
    res = simulate(env, [RMHL], torch.tensor([[2.5e-3]]), [0, 1], engine="torch")
    assert res.deviation[0].tolist() == pytest.approx(ref["deviation"], rel=1e-4)
    compiled = simulate(env, [RMHL], torch.tensor([[2.5e-3]]), [0, 1], engine="compiled")   # float64 numba loop
    assert compiled.deviation[0].tolist() == pytest.approx(ref["deviation"], rel=1e-2)
    assert compiled.extra["engine"] == "compiled"


def test_a_diverging_rule_scores_the_cap_and_is_flagged() -> None:
    from discovery.reward.sim import CAP, RewardEnv, simulate

    theta = torch.tensor([[0.0], [1e4]])
    for engine in ("torch", "compiled"):
        res = simulate(RewardEnv(task=1, **TINY), [reward_term("one_z_r").id], theta, [0], engine=engine)
        assert res.diverged.tolist() == [[False], [True]] and res.deviation[1, 0] == CAP
        assert 0 < res.deviation[0, 0] < CAP


def _spec(**rule: object) -> object:
    from discovery.spec import DiscoverySpec

    base = {**TINY, "popsize": 3, "generations": 2, "top_m": 2, "search_seeds": 1, "eval_seeds": 2, "grid": [1.0, 4.0]}
    return DiscoverySpec.model_validate({"task": {"kind": "reservoir-motor"}, "rule": {**base, **rule},
                                         "search": {"method": "forward", "max_terms": 2}})


def test_the_forward_search_meta_trains_theta_and_stores_a_front() -> None:
    from discovery.registry import get_family
    from discovery.router import discover

    spec = _spec()
    assert spec.family == "reward" and get_family("reward").name == "reward"
    events = []
    result = discover(spec, events.append)
    assert len(result.front) == 2 and sum(p.selected for p in result.front) == 1
    assert [p.n_terms for p in result.front] == [1, 2]
    assert any(v != 0 for p in result.front for v in p.theta.values())           # θ moved from 0
    assert all(p.rule.canonical.startswith("reward/v1:") for p in result.front)
    assert all(-2.0 <= p.heldout_accuracy <= 1.0 for p in result.front)
    assert [e.phase for e in events][:2] == ["screen from 0", "fit 1 terms"] and len(events) == 4
    assert result.search["timing"]["screening_s"] > 0 and result.rule.canonical.startswith("reward/v1:")


def test_the_spec_refuses_the_error_term_on_the_arm_and_unknown_terms() -> None:
    from pydantic import ValidationError

    assert len(_spec(pool="reward_supervised").rule.terms) == 24
    with pytest.raises(ValidationError, match="only motor task 1 is supervised"):
        _spec(motor_task=2, terms=["one_err_r"])
    with pytest.raises(ValidationError, match="unknown reward term"):
        _spec(terms=["F0"])


@pytest.mark.parametrize("goal", ["find a reward-modulated plasticity rule for a reservoir on a motor task",
                                  "find a three-factor rule for a reservoir computer"])
def test_plain_goals_reach_the_reward_family(goal: str) -> None:
    from discovery.goal import parse_goal

    spec = parse_goal(goal).spec
    assert spec.family == "reward" and spec.task.kind == "reservoir-motor" and spec.search.method == "forward"
    assert spec.rule.terms == REWARD_POOLS["reward"] and spec.rule.motor_task == 1
    assert parse_goal(goal + " with the two-joint arm").spec.rule.motor_task == 2


def test_the_suite_scores_a_reward_rule_beside_the_tuned_learners() -> None:
    from discovery.benchmarks.registry import run_suite

    report = run_suite("reservoir-motor", "0.0025*rmhl", tiny=True, overrides={"baselines": ["rmhl task2"]})
    names = {e["learner"]: e for e in report["entries"]}
    assert set(names) == {"rmhl task2", "rule task1", "rule task2"}
    for e in names.values():
        assert e["hyperparameters"]["lr_scale"] in (0.25, 1.0, 4.0) and len(e["metrics"]["deviation_per_seed"]) == 2
    # the library term and the seed's RMHL are the same learner on the arm: same tuned multiplier, same scores
    assert names["rule task2"]["score"] == pytest.approx(names["rmhl task2"]["score"], rel=1e-2)
    other = run_suite("reservoir-motor", "F0", tiny=True, overrides={"baselines": ["rmhl task2"]})
    assert [e["learner"] for e in other["entries"]] == ["rmhl task2"]
    assert any("not a reward rule" in n for n in other["notes"])


def test_repeated_theta_rows_are_simulated_once_with_the_same_scores() -> None:
    from discovery.reward.compare import CompareConfig, rule_entries

    cfg = CompareConfig(task=1, N=40, tune_seeds=(1,), test_seeds=(2, 3),
                        sizes={"periods_train": 2, "periods_test": 1, "period_steps": 200})
    learners = {"term": {RMHL: 0.0025}, "x4": {RMHL: 0.01}, "x2": {RMHL: 0.005}}   # ×4 of one = ×1 of another
    together = rule_entries(learners, cfg, {"x4", "x2"})
    alone = [rule_entries({k: v}, cfg, set())[0] for k, v in learners.items()]
    # alone vs batched with other rows: the same simulation up to BLAS blocking, which depends on the batch's size
    # (a last-bit difference was seen in CI), so to 1e-12; within one batch a repeated row is the same number
    for a, b in zip(together, alone):
        assert a["lr_scale"] == b["lr_scale"]
        assert a["deviation_per_seed"] == pytest.approx(b["deviation_per_seed"], rel=1e-12)
        assert a["tuning"]["deviation"] == pytest.approx(b["tuning"]["deviation"], rel=1e-12)
    assert together[0]["tuning"]["deviation"][2] == together[1]["tuning"]["deviation"][1]


def test_eligibility_traces_compiled_equal_torch_with_a_time_constant_per_candidate() -> None:
    from discovery.reward.sim import RewardEnv, simulate

    terms = [RMHL, reward_term("one_fluct_one").id]                       # a pre = r and a pre = 1 term
    theta = torch.tensor([[2e-2, 1e-3]] * 3)
    env = RewardEnv(task=1, **TINY)
    taus = [0.0, 3.0, 20.0]
    ref = simulate(env, terms, theta, [0, 1], engine="torch", dtype=torch.float64, trace_tau=taus)
    res = simulate(env, terms, theta, [0, 1], engine="compiled", trace_tau=taus)
    assert res.deviation.flatten().tolist() == pytest.approx(ref.deviation.flatten().tolist(), rel=1e-9)
    plain = simulate(env, terms, theta[:1], [0, 1])                        # τ = 0 is the rule without traces
    assert res.deviation[0].tolist() == plain.deviation[0].tolist()
    fixed = simulate(RewardEnv(task=1, trace_tau=20.0, **TINY), terms, theta[:1], [0, 1])
    assert res.deviation[2].tolist() == fixed.deviation[0].tolist()       # one τ per candidate = env.trace_tau
    assert res.deviation[1, 0] != res.deviation[2, 0]
    with pytest.raises(ValueError, match="trace_tau"):
        simulate(env, terms, theta, [0], trace_tau=[1.0, -1.0, 2.0])


def test_a_diverging_seed_learner_scores_the_cap_and_is_not_the_tuned_rate() -> None:
    from discovery.reward.compare import CompareConfig, builtin_entry
    from discovery.reward.sim import CAP

    cfg = CompareConfig(task=2, N=40, tune_seeds=(1,), test_seeds=(2, 3), grid=(1.0, 1e6),
                        sizes={"periods_train": 2, "periods_test": 1, "period_steps": 300})
    entry = builtin_entry(cfg, "rmhl")                     # κ × 10⁶ overflows the readout: NaN before the guard
    assert entry["tuning"]["deviation"][1] == CAP and entry["lr_scale"] == 1.0
    assert all(0 < v < CAP for v in entry["deviation_per_seed"])
    again = builtin_entry(cfg, "rmhl", tuning=[entry["tuning"]["deviation"][0], float("nan")])   # score only
    assert again["lr_scale"] == 1.0 and again["deviation_per_seed"] == entry["deviation_per_seed"]
