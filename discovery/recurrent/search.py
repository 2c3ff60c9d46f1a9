"""Open search over the recurrent library (docs/science.md S2): the recurrent side of discovery.search.generic.

A recurrent goal that names no term searches ``spec.rule.terms`` (pool ``rec_library``: the generated recurrent
library of rules.recurrent_library, the five published terms among its members) with the one search of every
family. :class:`RecurrentBackend` supplies what is recurrent: the trainer (RecurrentMetaTrainer: reverse-mode
meta-gradient through the T unrolled updates, each fixed point differentiated implicitly; Adam on φ = θ/s), the
per-episode meta-gradients ∂L/∂θ_r of the whole pool for the score test (one reverse pass per episode carrying
every term's θ_r, the candidates at 0), ‖F_r‖ at W₀ as the unit of effect, held-out evaluation (test accuracy ±
95 % t half-width over fresh W₀, the same episodes for every support: paired) and the RecurrentRule. There is no
base term: the first term is the best-screened one at θ = 0. No proximal step: ``forward`` and ``backward`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch

from discovery.feedforward.trainer import resolve_device
from discovery.recurrent.network import (
    DIVERGENCE_ERRORS,
    N_CLASSES,
    MnistData,
    load_mnist5k_split,
    run_episode,
    term_directions,
)
from discovery.recurrent.trainer import MAX_EVAL_EPISODES, RecurrentMetaTrainer
from discovery.results import DiscoveryResult, ProgressEvent
from discovery.search.generic import run_search
from discovery.spec import DiscoverySpec
from rules.recurrent import RecurrentRule, recurrent_term
from rules.recurrent_library import complexity as expr_complexity

NORM_STREAM = 424_242   # the norms' own generator (seed + NORM_STREAM): measuring them draws nothing from a search


@cache
def term_complexity(tid: str) -> int:
    """Σ over the expanded monomials of term ``tid`` of their matrix factors (rules.recurrent_library)."""
    return expr_complexity(recurrent_term(tid).expr)


class RecurrentBackend:
    """discovery.search.generic.SearchBackend of the recurrent family (see the module docstring)."""

    base_terms: tuple[str, ...] = ()
    methods = ("forward", "backward")

    def __init__(self, data: MnistData | None = None) -> None:
        self._data = data

    def data(self) -> MnistData:
        if self._data is None:
            self._data = load_mnist5k_split()
        return self._data

    def subspec(self, spec: DiscoverySpec, terms: list[str], theta: dict[str, float], episodes: int,
                **meta: Any) -> DiscoverySpec:
        raw = spec.model_dump()
        raw["rule"] = {"family": "recurrent", "terms": terms, "theta_init": {t: theta.get(t, 0.0) for t in terms}}
        raw["meta"].update({"episodes": max(1, episodes), **meta})
        raw["search"] = {"method": "none"}
        raw["sweep"] = {}
        return DiscoverySpec.model_validate(raw)

    def trainer(self, spec: DiscoverySpec, stream: int = 0) -> RecurrentMetaTrainer:
        return RecurrentMetaTrainer(spec, data=self.data(), stream=stream)

    def screen_gradients(self, trainer: RecurrentMetaTrainer, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n fresh episodes at the trainer's θ, each one reverse pass: per-episode query CE and ∂CE/∂θ_r (NaN for
        an episode whose fixed point was lost)."""
        losses, grads = [], []
        R = len(trainer.term_ids)
        for _ in range(n):
            W0, batches, query = trainer.sample_episode()
            try:
                out = run_episode(trainer.net, W0, batches, query, trainer.theta, trainer.term_ids, trainer.cfg)
                loss, grad = out.loss, out.grad
            except DIVERGENCE_ERRORS:
                loss, grad = math.nan, None
            losses.append(loss)
            grads.append(grad if grad is not None else torch.full((R,), math.nan, dtype=trainer.dtype))
        return torch.tensor(losses, dtype=torch.float64), torch.stack(grads, 1)

    def norms(self, trainer: RecurrentMetaTrainer) -> torch.Tensor:
        """‖F_r‖_F at W₀ on one minibatch of a fresh episode (its own generator)."""
        gen = torch.Generator().manual_seed(trainer.spec.meta.seed + NORM_STREAM)
        W0 = trainer._W0(gen)
        (x, y), = trainer._episode_data(gen, trainer.inner_idx, 1, trainer.setting.batch)
        with torch.no_grad():
            r, logits = trainer.net.readout(W0, x, trainer.cfg)
            p = torch.softmax(logits, -1)
            delta = (p - torch.nn.functional.one_hot(y, N_CLASSES).to(p.dtype)) @ trainer.net.R
            dirs = term_directions(W0, r, delta, trainer.term_ids, trainer.cfg)
        return torch.stack([d.norm() for d in dirs]).double().cpu()

    def streams(self, trainer: RecurrentMetaTrainer) -> dict[str, Any]:
        return {"gen": trainer.gen.get_state()}

    def set_streams(self, trainer: RecurrentMetaTrainer, state: dict[str, Any]) -> None:
        trainer.gen.set_state(state["gen"])

    def redraw(self, trainer: RecurrentMetaTrainer, n: int) -> None:
        for _ in range(n):
            trainer.sample_episode()

    def evaluate(self, trainer: RecurrentMetaTrainer, episodes: int) -> tuple[float | None, float | None, int]:
        ev = trainer.evaluate(min(episodes, MAX_EVAL_EPISODES))
        return ev["accuracy"], ev["ci95"], ev["episodes"]

    def rule(self, terms: list[str], theta: dict[str, float], name: str | None = None) -> dict[str, Any]:
        th = {t: theta[t] for t in terms}
        return {**RecurrentRule(th, name=name).rounded(6).to_dict(), "coefficients_raw": th}

    def complexity(self, terms: list[str]) -> int:
        return sum(term_complexity(t) for t in terms)

    def device(self, spec: DiscoverySpec) -> str:
        return str(resolve_device(spec.resources.device))


def discover_recurrent_search(spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
                              checkpoint_dir: Path | str | None = None,
                              should_stop: Callable[[], bool] | None = None, *,
                              data: MnistData | None = None) -> DiscoveryResult:
    """The open search over ``spec.rule.terms`` (see the module docstring); the result's rule is the selected
    support's, ``front`` holds every support found."""
    return run_search(spec, RecurrentBackend(data), progress, checkpoint_dir, should_stop)
