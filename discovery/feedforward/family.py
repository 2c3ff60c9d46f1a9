"""The feed-forward family as a discovery.family.Family (docs/science.md S3): ΔW_ℓ = Σ_r θ_r F_r(x, y, e, e_pre, W)
applied online in a few-shot MLP, θ meta-trained on the query cross-entropy with forward-mode meta-gradients;
terms: the named F0…F9 and the generated library (rules.terms, rules.library)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from discovery.family import FamilyBase, ProgressCallback
from discovery.results import DiscoveryResult

#: the goal of the smallest feed-forward job (the golden tiny discovery's goal, tests/golden)
TINY_GOAL = "find a plasticity rule for depth-2 online learning under feedback alignment on synthetic data, tiny"


class FeedforwardFamily(FamilyBase):
    """discovery.family.Family for the feed-forward rules (task kind "fewshot")."""

    name = "feedforward"
    goal_words = ("plasticity rule", "feedback alignment", "few-shot", "online learning")
    gradient_mode = "forward"
    meta_objective = "query cross-entropy after the online inner loop of an episode + λ‖θ‖₁"

    def primitives(self) -> Mapping[str, Any]:
        from rules.primitives import PRIMITIVES

        return PRIMITIVES

    def term_library(self) -> Sequence[Any]:
        from rules.terms import TERMS

        return list(TERMS.values())

    def trainer(self, spec: Any, stream: int = 0) -> Any:
        from discovery.feedforward.trainer import MetaTrainer

        return MetaTrainer(spec, stream=stream)

    def search_backend(self) -> Any:
        from discovery.search.open_search import FeedforwardBackend

        return FeedforwardBackend()

    def tiny_spec(self) -> Any:
        from discovery.goal import parse_goal

        return parse_goal(TINY_GOAL).spec

    def meta_train(self, spec: Any, on_progress: ProgressCallback | None = None, **kwargs: Any) -> DiscoveryResult:
        """The open search (discovery.search) when the spec asks for one on few-shot episodes, else one fit."""
        from discovery.feedforward.trainer import discover_feedforward
        from discovery.search.open_search import discover_search

        folder, stop = kwargs.get("checkpoint_dir"), kwargs.get("should_stop")
        if spec.search.active and spec.task.kind == "fewshot":
            return discover_search(spec, on_progress, folder, stop)
        return discover_feedforward(spec, on_progress, folder, stop)


FAMILY = FeedforwardFamily()

__all__ = ["FAMILY", "FeedforwardFamily"]
