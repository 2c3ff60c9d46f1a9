"""The reward family: a reservoir readout z = W r + ζ learning a motor task of docs/science.md S5 by a three-factor
rule ΔW = Σ_k θ_k M_k post_k pre_kᵀ from a generated library (rules.reward); θ fitted by CMA-ES for the test-phase
deviation, the structure by forward selection; the front is scored on the `shortened` protocol (docs/reward.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from discovery.family import FamilyBase, ProgressCallback
from discovery.results import DiscoveryResult


class RewardFamily(FamilyBase):
    """discovery.family.Family for the reward-modulated (three-factor) rules (task kind "reservoir-motor")."""

    name = "reward"
    gradient_mode = "gradient-free"
    meta_objective = "test-phase deviation after training with exploration noise (common seeds); fitted by CMA-ES"
    goal_words = ("reward-modulated", "reward modulated", "three-factor", "three factor", "neuromodulated",
                  "reservoir")

    def term_library(self) -> Sequence[Any]:
        from rules.reward import REWARD_TERMS

        return list(REWARD_TERMS.values())

    def meta_train(self, spec: Any, on_progress: ProgressCallback | None = None, **kwargs: Any) -> DiscoveryResult:
        from discovery.reward.job import discover_reward

        return discover_reward(spec, on_progress, kwargs.get("should_stop"), kwargs.get("checkpoint_dir"))

    def suites(self) -> list[str]:
        return ["reservoir-motor"]

    def baselines(self) -> list[str]:
        return ["FORCE", "RMHL", "SUPERTREX"]

    def evaluate(self, rule: Any, suite: str, seed: int = 0) -> dict[str, Any]:
        """The ``reservoir-motor`` suite with ``rule`` scored beside FORCE, RMHL and SUPERTREX (a report dict)."""
        if suite != "reservoir-motor":
            return super().evaluate(rule, suite, seed)
        from discovery.benchmarks.registry import run_suite

        return run_suite(suite, rule=rule, seed=seed)


FAMILY = RewardFamily()

__all__ = ["FAMILY", "RewardFamily"]
