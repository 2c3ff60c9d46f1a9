"""A reward-family job: a DiscoverySpec of task kind ``reservoir-motor`` → the open search (discovery.reward.search)
→ the shared DiscoveryResult (the selected front point is the rule)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from discovery.results import DiscoveryResult, ProgressEvent
from discovery.reward.search import RewardSearch, RewardSearchConfig
from discovery.reward.sim import RewardEnv
from rules.reward import REWARD_TERMS, RMHL, RewardRule


def envs_from_spec(spec: Any) -> tuple[RewardEnv, RewardEnv]:
    """The search env (search protocol) and the score env (score protocol) of a reward spec."""
    r = spec.rule
    common = {"task": r.motor_task, "N": r.N, "periods_train": r.periods_train, "periods_test": r.periods_test,
              "period_steps": r.period_steps, "reward_tau": r.reward_tau, "trace_tau": r.trace_tau,
              "shaping": r.shaping}
    return RewardEnv(protocol=r.search_protocol, **common), RewardEnv(protocol=r.score_protocol, **common)


def config_from_spec(spec: Any) -> RewardSearchConfig:
    """Search settings: reservoir seeds 10⁴·meta.seed + i (search) and + 500 + i (held-out front scoring)."""
    r, base = spec.rule, 10_000 * spec.meta.seed
    return RewardSearchConfig(method="forward" if spec.search.active else "none",
                              max_terms=spec.search.max_terms, grid=tuple(r.grid), top_m=r.top_m,
                              popsize=r.popsize, generations=r.generations,
                              search_seeds=tuple(base + i for i in range(r.search_seeds)),
                              eval_seeds=tuple(base + 500 + i for i in range(r.eval_seeds)))


def discover_reward(spec: Any, progress: Callable[[ProgressEvent], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> DiscoveryResult:
    """Run the reward family for a DiscoverySpec: the forward search over the rule's pool (search.method
    forward) or a CMA-ES fit of the named terms (method none). No checkpoints: a restarted job starts again."""
    t0 = time.perf_counter()
    env, score_env = envs_from_spec(spec)
    cfg = config_from_spec(spec)
    pool = list(spec.rule.terms or [])
    search = RewardSearch(env, score_env, pool, cfg, progress, should_stop)
    front, fits = search.run()
    chosen = next((p for p in front if p.selected), None)
    theta = chosen.theta if chosen else (fits[-1].theta if fits else {})
    rule = chosen.rule if chosen else ({**RewardRule(theta).to_dict(), "coefficients_raw": theta} if theta else {})
    return DiscoveryResult(
        rule=rule, theta=theta, history=search.log.history, theta_history=[h["theta"] for h in search.log.history],
        heldout_accuracy=chosen.heldout_accuracy if chosen else None,
        heldout_ci95=chosen.heldout_ci95 if chosen else None,
        heldout_episodes=chosen.heldout_episodes if chosen else 0, diverged_episodes=0, skipped_steps=0,
        stopped=search.stopped, wall_time_s=time.perf_counter() - t0, device="cpu", spec=spec.model_dump(),
        front=front,
        search={"family": "reward", "method": cfg.method, "pool": pool, "names": {t: REWARD_TERMS[t].name for t in pool},
                "score": "1 − test-phase deviation on the score protocol, held-out seeds",
                "search_protocol": env.protocol, "score_protocol": score_env.protocol, "N": env.N,
                "timing": search.log.timing, "simulations": search.log.simulations,
                "reservoir_steps": search.log.reservoir_steps, "screening": search.log.screening,
                "stages": [{"label": f.stage, "kind": "fit", "terms": f.terms, "train_deviation": f.train_deviation}
                           for f in fits],
                "rmhl_in_selected": bool(chosen and RMHL in chosen.terms)})
