"""A reward-family job: a DiscoverySpec of task kind ``reservoir-motor`` → the generic open search with the reward
backend (discovery.reward.search) → the shared DiscoveryResult (the selected front point is the rule)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from discovery.results import DiscoveryResult, ProgressEvent
from discovery.reward.search import RewardBackend, RewardSearch, RewardSearchConfig
from discovery.reward.sim import RewardEnv
from discovery.search.generic import FamilySearch, search_result


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
                    should_stop: Callable[[], bool] | None = None,
                    checkpoint_dir: Path | str | None = None) -> DiscoveryResult:
    """Run the reward family for a DiscoverySpec: the forward search over the rule's pool (search.method
    forward) or a CMA-ES fit of the named terms (method none), through the generic search; a restarted job with
    the same ``checkpoint_dir`` replays the finished stages."""
    t0 = time.perf_counter()
    env, score_env = envs_from_spec(spec)
    engine = RewardSearch(env, score_env, list(spec.rule.terms or []), config_from_spec(spec))
    search = FamilySearch(spec, RewardBackend(engine), progress, checkpoint_dir, should_stop)
    front, fits = search.run()
    return search_result(spec, search, front, fits, t0)
