"""Open discovery for the feed-forward family: search which terms of a pool the rule needs, then return a complexity ×
accuracy front. The search itself is written once for every family (discovery.search.generic); this module is the
feed-forward side of it (:class:`FeedforwardBackend`: MetaTrainer, forward-mode screening, held-out few-shot
evaluation, the sympy rule) and keeps the names it always had (``Search``, ``discover_search``, ``complexity``).

Three searches share one budget of meta-training episodes (spec.meta.episodes) and one scoring:

* ``forward`` — greedy forward selection by **meta-gradient screening**. Forward mode carries ∂W/∂θ_r for every
  term of the pool, so one meta-batch with θ_r = 0 for the candidates gives ∂L/∂θ_r for all of them at the cost of
  one episode with R tangents. Over n such episodes the candidate of largest |t_r| = |ḡ_r| / (s_r/√n) (Rao's score
  test of θ_r = 0, invariant to the term's scale) joins the support, which is refit warm-started (only its own
  tangents, cheap); repeated up to ``max_terms``.
* ``backward`` — fit the whole pool, then repeatedly drop the term of the smallest effect |φ_r| and refit.
* ``path`` — proximal L1 (``meta.l1_mode = "proximal"``) along λ_k = λ_max · 2^{−k/2} from the sparse end (λ_max:
  the largest significant KKT violation |ḡ_r| − 2·se_r at the first support's θ, above which no term enters),
  each λ fit over a KKT
  working set (the nonzero terms and the zero ones whose screened |ḡ_r| exceeds λ_k by more than 2 standard
  errors) with warm starts, the first support (F0) unpenalized; each support the path visits is refit without
  L1 (debiasing).

Every support gets a refit θ and is scored on the same held-out episodes (paired across supports); the front is
the list of these rules (number of terms, complexity, held-out accuracy ± 95 % CI) and the selected rule is the
simplest whose accuracy lies within the CI of the best (PySR's convention).

Resume. The finished stages are listed in ``checkpoint_dir/search.json`` (their θ, screening statistics and
history) and replayed from it; a fit stage checkpoints its trainer (θ, φ, Adam, its sampler and generator, its
history) every ``meta.checkpoint_every`` episodes in ``stage_<i>/checkpoint.pt``, so an interrupted fit goes on
from its last checkpoint; a screen stage writes the screener's episode-sampler and weight-generator state after it
in ``stage_<i>/screener.pt`` (before ``search.json`` lists the stage), so the screens after a restart draw the same
episodes and networks as an uninterrupted run. A resumed search (same seed, same thread count) therefore ends with
the same front, bit for bit. ``resumed_from`` is the job's episode where the resumed attempt started (the finished
stages' episodes plus those already done inside the interrupted stage), and one ProgressEvent says where
(``phase`` = "resumed stage 3 (fit 2 terms) at episode 340").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from discovery.feedforward.trainer import MetaTrainer, learned_rule, resolve_device, term_norms
from discovery.results import DiscoveryResult, ProgressEvent
from discovery.search.generic import (
    KKT_Z,
    LAMBDA_RATIO,
    SCREENER_FILE,
    STATE_FILE,
    FamilySearch,
    Stage,
    run_search,
    select,
)
from discovery.spec import DiscoverySpec
from rules.terms import term

__all__ = ["KKT_Z", "LAMBDA_RATIO", "SCREENER_FILE", "STATE_FILE", "FeedforwardBackend", "Search", "Stage",
           "complexity", "discover_search", "select"]


def complexity(terms: list[str]) -> int:
    """Σ over the terms' monomials of their primitive factors (e xᵀ = 2, y (yᵀW) = 4, (1ᵀy) e xᵀ = 4)."""
    return sum(sum(len(seg) for seg in mono.spine) + sum(len(s) for s in mono.scalars)
               for t in terms for mono in term(t).poly.terms)


class FeedforwardBackend:
    """The feed-forward family's side of discovery.search.generic: MetaTrainer (forward-mode meta-gradients, its
    own checkpoint), F0 as the base term, all three searches (the proximal L1 step makes ``path`` possible)."""

    base_terms = ("F0",)
    methods = ("forward", "backward", "path")

    def subspec(self, spec: DiscoverySpec, terms: list[str], theta: dict[str, float], episodes: int,
                **meta: Any) -> DiscoverySpec:
        data = spec.model_dump()
        data["rule"] = {"terms": terms, "theta_init": {t: theta.get(t, 0.0) for t in terms}}
        data["meta"].update({"episodes": max(1, episodes), **meta})
        data["search"] = {"method": "none"}
        data["sweep"] = {}
        return DiscoverySpec.model_validate(data)

    def trainer(self, spec: DiscoverySpec, stream: int = 0) -> MetaTrainer:
        return MetaTrainer(spec, stream=stream)

    def screen_gradients(self, trainer: MetaTrainer, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward-mode meta-batch of n fresh episodes carrying all R tangents: per-episode ∂L/∂θ_r."""
        ep = trainer.train_sampler.sample(n, device=trainer.device, dtype=trainer.dtype)
        Ws, Bs = trainer._weights(n)
        loss, grad, _, _ = trainer.meta_gradient(ep, Ws, Bs)
        return loss, grad

    def norms(self, trainer: MetaTrainer) -> torch.Tensor:
        return trainer.norms if trainer.norms is not None else term_norms(trainer)

    def streams(self, trainer: MetaTrainer) -> dict[str, Any]:
        return {"train_sampler": trainer.train_sampler.get_state(), "gen": trainer.gen.get_state()}

    def set_streams(self, trainer: MetaTrainer, state: dict[str, Any]) -> None:
        trainer.train_sampler.set_state(state["train_sampler"])
        trainer.gen.set_state(state["gen"])

    def redraw(self, trainer: MetaTrainer, n: int) -> None:
        trainer.train_sampler.sample(n, device=trainer.device, dtype=trainer.dtype)
        trainer._weights(n)

    def evaluate(self, trainer: MetaTrainer, episodes: int) -> tuple[float | None, float | None, int]:
        return trainer.evaluate(episodes)

    def rule(self, terms: list[str], theta: dict[str, float], name: str | None = None) -> dict[str, Any]:
        return {**learned_rule(terms, theta).to_dict(), "coefficients_raw": theta}

    def complexity(self, terms: list[str]) -> int:
        return complexity(terms)

    def device(self, spec: DiscoverySpec) -> str:
        return str(resolve_device(spec.resources.device))


class Search(FamilySearch):
    """The feed-forward open search (discovery.search.generic.FamilySearch with :class:`FeedforwardBackend`)."""

    def __init__(self, spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
                 checkpoint_dir: Path | str | None = None, should_stop: Callable[[], bool] | None = None):
        super().__init__(spec, FeedforwardBackend(), progress, checkpoint_dir, should_stop)


def discover_search(spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
                    checkpoint_dir: Path | str | None = None,
                    should_stop: Callable[[], bool] | None = None) -> DiscoveryResult:
    """Run spec.search over spec.rule.terms and return the selected rule with the whole front."""
    return run_search(spec, FeedforwardBackend(), progress, checkpoint_dir, should_stop)
