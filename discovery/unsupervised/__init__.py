"""The unsupervised family: a linear layer y = W x (k×d) trained online, one sample per step, by an error-free
Hebbian rule ΔW = Σ_r θ_r F_r from a generated library (rules.unsupervised); θ meta-learned for the held-out
reconstruction ‖x − WᵀW x‖² (or the principal-subspace error); the open search returns a front (docs/unsupervised.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from discovery.family import FamilyBase, ProgressCallback
from discovery.results import DiscoveryResult


class UnsupervisedFamily(FamilyBase):
    """discovery.family.Family for the unsupervised Hebbian rules (task kind "pca")."""

    name = "unsupervised"
    goal_words = ("unsupervised", "principal components", "principal subspace", "pca", "extracts")
    gradient_mode = "reverse"
    meta_objective = ("log normalized reconstruction error ‖X − X WᵀW‖²/‖X‖² on the training split (or the "
                      "principal-subspace error) after the online unroll, mean over common episodes; by L-BFGS")

    def term_library(self) -> Sequence[Any]:
        from discovery.unsupervised.terms import term_library

        return term_library()

    def meta_train(self, spec: Any, on_progress: ProgressCallback | None = None, **kwargs: Any) -> DiscoveryResult:
        from discovery.unsupervised.search import discover_unsupervised

        return discover_unsupervised(spec, on_progress, kwargs.get("checkpoint_dir"), kwargs.get("should_stop"))


FAMILY = UnsupervisedFamily()

__all__ = ["FAMILY", "UnsupervisedFamily"]
