"""Open search over the recurrent terms (docs/science.md S2): forward selection, a (n_terms, held-out accuracy) front.

A recurrent goal that names no term searches the pool of ``spec.rule.terms`` (the published additive terms
rec_dW1, rec_dW3, rec_dW4, rec_oja, rec_decay): from the empty support, every remaining candidate joins the
current support on trial, θ is meta-trained for ``trial`` meta-steps from the current fit (warm start; a new term
starts at its published θ, Oja and decay at 0) on fixedpoint-mnist, and the candidate with the lowest mean
meta-loss over its last steps joins (meta-training episodes only, never the test images). Each support on the
way is then scored on the same held-out episodes (test accuracy ± 95 % t half-width) and the simplest support
within the CI of the best is selected (the convention of discovery.search and the unsupervised search). The
episode budget is ``meta.episodes`` meta-steps per trial fit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from discovery.recurrent.network import MnistData, load_mnist5k_split
from discovery.recurrent.trainer import MAX_EVAL_EPISODES, RecurrentMetaTrainer
from discovery.results import DiscoveryResult, FrontPoint, ProgressEvent
from discovery.spec import DiscoverySpec
from rules.recurrent import RecurrentRule

#: meta-steps at the end of a trial fit whose mean meta-loss ranks the candidate
LOSS_WINDOW = 3


def _trainer(spec: DiscoverySpec, terms: list[str], theta: dict[str, float], data: MnistData
             ) -> RecurrentMetaTrainer:
    raw = spec.model_dump()
    raw["rule"] = {"family": "recurrent", "terms": terms, "theta_init": {t: theta[t] for t in terms if t in theta}}
    raw["search"] = {}
    return RecurrentMetaTrainer(DiscoverySpec.model_validate(raw), data=data)


def _mean_loss(trainer: RecurrentMetaTrainer) -> float:
    losses = [h["meta_loss"] for h in trainer.history[-LOSS_WINDOW:] if h.get("meta_loss") is not None]
    return sum(losses) / len(losses) if losses else math.inf


def select(front: list[FrontPoint]) -> int:
    """The fewest terms whose accuracy is within the best's 95 % half-width (the last point when none scored)."""
    scored = [(i, p) for i, p in enumerate(front) if p.heldout_accuracy is not None]
    if not scored:
        return len(front) - 1
    best = max(scored, key=lambda ip: ip[1].heldout_accuracy or 0.0)[1]
    floor = (best.heldout_accuracy or 0.0) - (best.heldout_ci95 or 0.0)
    return min((p.n_terms, -(p.heldout_accuracy or 0.0), i) for i, p in scored
               if (p.heldout_accuracy or 0.0) >= floor)[2]


def discover_recurrent_search(spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
                              checkpoint_dir: Path | str | None = None,
                              should_stop: Callable[[], bool] | None = None, *,
                              data: MnistData | None = None) -> DiscoveryResult:
    """Forward search over ``spec.rule.terms`` (see the module docstring); the result's rule is the selected
    support's, ``front`` holds every support found."""
    t0 = time.perf_counter()
    data = data if data is not None else load_mnist5k_split()
    pool = list(spec.rule.terms or [])
    theta0 = spec.rule.initial_theta()
    max_terms = min(spec.search.max_terms, len(pool))
    planned = sum(len(pool) - k for k in range(max_terms)) * spec.meta.episodes
    done = 0
    history: list[dict[str, Any]] = []
    stopped = False

    def relay(label: str) -> Callable[[ProgressEvent], None]:
        def on(event: ProgressEvent) -> None:
            nonlocal done
            done += 1
            out = event.model_copy(update={"episode": done, "total": planned, "phase": label})
            history.append(out.model_dump())
            if progress is not None:
                progress(out)
        return on

    support: list[str] = []
    theta: dict[str, float] = {}
    fits: list[RecurrentMetaTrainer] = []
    screens: list[dict[str, Any]] = []
    diverged = skipped = 0
    while len(support) < max_terms and not stopped:
        trials: dict[str, tuple[float, RecurrentMetaTrainer]] = {}
        for cand in [t for t in pool if t not in support]:
            trainer = _trainer(spec, [*support, cand], {**theta0, **theta}, data)
            stopped = trainer.run(relay(f"trial {len(support) + 1}: +{cand}"), None, should_stop)
            diverged, skipped = diverged + trainer.diverged, skipped + trainer.skipped
            trials[cand] = (_mean_loss(trainer), trainer)
            if stopped:
                break
        if not trials:
            break
        best = min(trials, key=lambda c: trials[c][0])
        screens.append({"support": list(support), "meta_loss": {c: v for c, (v, _) in trials.items()},
                        "added": best})
        support.append(best)
        fits.append(trials[best][1])
        theta = fits[-1].theta_dict()
    n_eval = 0 if stopped else min(spec.meta.eval_episodes, MAX_EVAL_EPISODES)
    front: list[FrontPoint] = []
    for trainer in fits:
        ev = trainer.evaluate(n_eval) if n_eval else {"accuracy": None, "ci95": None, "episodes": 0}
        th = trainer.theta_dict()
        rule = RecurrentRule(th, name=spec.name).rounded(6).to_dict()
        rule["coefficients_raw"] = th
        front.append(FrontPoint(terms=list(th), theta=th, rule=rule, n_terms=len(th), complexity=len(th),
                                heldout_accuracy=ev["accuracy"], heldout_ci95=ev["ci95"],
                                heldout_episodes=ev["episodes"], stage="forward"))
    if not front:
        raise RuntimeError("the recurrent search was stopped before it fitted a support")
    chosen = select(front)
    front[chosen].selected = True
    pick = front[chosen]
    return DiscoveryResult(
        rule=pick.rule, theta=pick.theta, history=history, theta_history=[h["theta"] for h in history],
        heldout_accuracy=pick.heldout_accuracy, heldout_ci95=pick.heldout_ci95,
        heldout_episodes=pick.heldout_episodes, diverged_episodes=diverged, skipped_steps=skipped,
        stopped=stopped, wall_time_s=time.perf_counter() - t0, device=str(fits[0].device), spec=spec.model_dump(),
        front=front, search={"method": "forward", "pool": pool, "max_terms": max_terms, "screens": screens,
                             "selected": chosen, "trial_steps": spec.meta.episodes})
