"""The recurrent fixed-point family as a discovery.family.Family (docs/science.md S2): ΔW = Σ_k θ_k F_k(W, r, δ, G, u)
of the recurrent weights of r = tanh(W r + W_x x), θ meta-trained on fixedpoint-mnist with reverse-mode
meta-gradients (implicit differentiation of each fixed point); terms: the generated recurrent library
(rules.recurrent_library) with the published rec_dW1, rec_dW3, rec_dW4, rec_oja, rec_decay as named members."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from discovery.family import FamilyBase, ProgressCallback
from discovery.results import DiscoveryResult

#: the goal of the smallest recurrent job: a plain goal (open search over the library), tiny sizes
TINY_GOAL = "find a local learning rule for a recurrent network that converges to fixed points, tiny"


class RecurrentFamily(FamilyBase):
    """discovery.family.Family for the recurrent fixed-point rules (task kind "fixedpoint-mnist")."""

    name = "recurrent"
    goal_words = ("recurrent", "fixed points", "fixed-point rnn")
    gradient_mode = "reverse"
    meta_objective = ("query cross-entropy at the fixed point of W_T after T inner updates of W (fixedpoint-mnist) "
                      "+ λ‖θ‖₁")

    def primitives(self) -> Mapping[str, Any]:
        from rules.recurrent import RECURRENT_PRIMITIVES

        return RECURRENT_PRIMITIVES

    def term_library(self) -> Sequence[Any]:
        from rules.recurrent import RECURRENT_LIBRARY

        return list(RECURRENT_LIBRARY.values())

    def trainer(self, spec: Any, stream: int = 0) -> Any:
        from discovery.recurrent.trainer import RecurrentMetaTrainer

        return RecurrentMetaTrainer(spec, stream=stream)

    def search_backend(self) -> Any:
        from discovery.recurrent.search import RecurrentBackend

        return RecurrentBackend()

    def tiny_spec(self) -> Any:
        from discovery.goal import parse_goal

        return parse_goal(TINY_GOAL).spec

    def meta_train(self, spec: Any, on_progress: ProgressCallback | None = None, **kwargs: Any) -> DiscoveryResult:
        """The open search over the spec's pool when it asks for one, else one fit of the named terms."""
        from discovery.recurrent.search import discover_recurrent_search
        from discovery.recurrent.trainer import discover_recurrent

        folder, stop = kwargs.get("checkpoint_dir"), kwargs.get("should_stop")
        if spec.search.active:
            return discover_recurrent_search(spec, on_progress, folder, stop)
        return discover_recurrent(spec, on_progress, folder, stop)


FAMILY = RecurrentFamily()

__all__ = ["FAMILY", "RecurrentFamily"]
