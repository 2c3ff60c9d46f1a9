"""Open search over the unsupervised library: stepwise selection, a (n_terms, held-out score) front, selection,
final refit.

Every fit is L-BFGS (strong-Wolfe line search) on a sample-average meta-objective: the mean over ``fit_episodes``
common episodes (the same W₀ and sample orders for every support), so fits are deterministic and their training
losses comparable. Forward selection from the empty rule over the whole generated library (no hint): at the current
support's θ (candidates at θ_r = 0), Rao's score test t_r = ḡ_r / (s_r/√n) over n fresh episodes; the ``trials``
candidates of largest |t_r| are each fitted briefly and the one with the lowest meta-objective joins; the support is
refit; up to ``max_terms`` terms. Then backward elimination from the largest support: each term removed in turn,
the rest refit, the lowest-loss removal kept, down to one term. Every distinct support (its lowest-loss fit) is
scored on the same held-out episodes (paired): score = 1 − held-out normalized reconstruction error at the horizon
T (objective ``reconstruction``) or 1 − subspace error at T (``subspace``), with its 95 % t half-width. Selection:
the support with the fewest terms (then the lowest complexity) whose score is ≥ best score − the best's 95 %
half-width (PySR's convention). The selected support is then refit alone with the full budget at the final horizon
``final_unroll`` (a longer unroll learns a smaller step η, hence a lower stationary subspace error) and replaces its
front point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from discovery.results import DiscoveryResult, FrontPoint, ProgressEvent
from discovery.search.open_search import select  # one selection rule for every family's front
from discovery.unsupervised.data import load_pca_data
from discovery.unsupervised.terms import OJA_DECAY, OJA_HEBB
from discovery.unsupervised.trainer import Evaluation, FitResult, InnerConfig, UnsupervisedTrainer
from rules.unsupervised import UNSUPERVISED_TERMS, UnsupervisedRule


@dataclass(frozen=True)
class SearchConfig:
    """Budget and settings of the stepwise search (every fit: L-BFGS on ``fit_episodes`` common episodes)."""

    method: str = "forward"          # "forward" (forward then backward elimination) or "none" (fit the given terms)
    max_terms: int = 3
    screen_episodes: int = 16
    fit_evals: int = 15              # function evaluations (each fit_episodes episodes) per support fit
    trials: int = 3                  # screened candidates refit on trial before one joins
    trial_evals: int = 6
    fit_episodes: int = 8            # common episodes of the sample-average meta-objective
    backward: bool = True
    final_evals: int = 25            # the selected support refit alone at the final horizon
    final_episodes: int = 16
    final_unroll: int | None = None  # the final horizon (None: the search's)
    eval_episodes: int = 16
    passes: int = 5
    seed: int = 0


@dataclass
class SearchOutcome:
    """Everything a search produced: the front (selected point marked), the fits, screenings and evaluations."""

    front: list[FrontPoint]
    fits: list[FitResult]
    screens: list[dict[str, Any]]
    evaluations: list[dict[str, Any]]
    history: list[dict[str, Any]]
    episodes: int
    stopped: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def complexity(terms: Sequence[str]) -> int:
    """Σ over the terms' monomials of their primitive factors (y xᵀ = 2, y (yᵀW) = 3, (yᵀy) y xᵀ = 4)."""
    return sum(sum(len(seg) for seg in mono.spine) + sum(len(s) for s in mono.scalars)
               for t in terms for mono in UNSUPERVISED_TERMS[t].poly.terms)


def oja_ratio(theta: dict[str, float]) -> float | None:
    """θ_{y yᵀW} / θ_{y xᵀ} (Oja's rule: −1), None when the rule lacks y xᵀ."""
    hebb = theta.get(OJA_HEBB, 0.0)
    return theta.get(OJA_DECAY, 0.0) / hebb if hebb else None


class UnsupervisedSearch:
    """Stepwise selection over ``pool`` with a trainer (see the module docstring)."""

    def __init__(self, trainer: UnsupervisedTrainer, cfg: SearchConfig,
                 progress: Callable[[ProgressEvent], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, total_episodes: int | None = None) -> None:
        self.trainer, self.cfg = trainer, cfg
        self.pool = trainer.pool
        self.progress, self.should_stop = progress, should_stop
        self.used = 0
        self.total = total_episodes or self.planned_episodes(cfg)
        self.history: list[dict[str, Any]] = []
        self.screens: list[dict[str, Any]] = []
        self.stopped = False
        self.fit_seed = 50_000 + 97 * cfg.seed        # the common episodes of every search fit

    @staticmethod
    def planned_episodes(cfg: SearchConfig) -> int:
        """Episodes the search plans to use (an upper bound: L-BFGS may stop early)."""
        if cfg.method != "forward":
            return (cfg.fit_evals + cfg.final_evals) * cfg.fit_episodes
        per_stage = cfg.screen_episodes + (cfg.trials * cfg.trial_evals + cfg.fit_evals) * cfg.fit_episodes
        backward = (cfg.max_terms * (cfg.max_terms - 1) // 2) * cfg.fit_evals * cfg.fit_episodes if cfg.backward \
            else 0
        return cfg.max_terms * per_stage + backward + cfg.final_evals * cfg.final_episodes

    def _stop(self) -> bool:
        self.stopped = self.stopped or bool(self.should_stop and self.should_stop())
        return self.stopped

    def screen(self, theta: dict[str, float], label: str) -> dict[str, Any]:
        """Score test of every pool term at θ: t_r = ḡ_r / (s_r/√n) over n fresh episodes (∂L/∂φ_r)."""
        n = self.cfg.screen_episodes
        losses, grad = self.trainer.per_episode_gradient(theta, n)
        finite = torch.isfinite(losses) & torch.isfinite(grad).all(1)
        g = grad[finite]
        k = g.shape[0]
        mean = g.mean(0) if k else torch.zeros(len(self.pool), dtype=grad.dtype)
        sem = g.std(0) / math.sqrt(k) if k > 1 else torch.full_like(mean, math.inf)
        t = torch.where(sem > 0, mean / sem, torch.zeros_like(mean))
        self.used += n
        out = {"label": label, "theta": dict(theta), "episodes": n, "meta_loss": float(losses[finite].mean()),
               "scores": {p: float(v) for p, v in zip(self.pool, t.tolist(), strict=True)},
               "gradient": {p: float(v) for p, v in zip(self.pool, mean.tolist(), strict=True)}}
        self.screens.append(out)
        return out

    def fit(self, terms: Sequence[str], theta: dict[str, float], label: str, evals: int | None = None,
            report: bool = True, trainer: UnsupervisedTrainer | None = None, episodes: int | None = None
            ) -> FitResult:
        """L-BFGS fit of ``terms`` warm started at θ (terms not in θ start at 0) on the common episodes."""
        trainer = trainer or self.trainer
        episodes = episodes or self.cfg.fit_episodes
        offset = self.used

        def on_step(event: dict[str, Any]) -> None:
            if not report:
                return
            record = {"episode": offset + event["step"] * episodes, "total": self.total,
                      "meta_loss": event["meta_loss"], "meta_accuracy": None, "theta": event["theta"],
                      "lr": event["lr"], "phase": label, "dropped_episodes": event["dropped_episodes"],
                      "skipped": event["skipped"]}
            self.history.append(record)
            if self.progress is not None:
                self.progress(ProgressEvent(**record))

        result = trainer.fit_lbfgs(list(terms), {t: theta.get(t, 0.0) for t in terms}, evals or self.cfg.fit_evals,
                                   episodes=episodes, seed=self.fit_seed, label=label, on_step=on_step,
                                   should_stop=self._stop)
        self.used += result.steps * episodes
        return result

    def forward(self, start: Sequence[str] = ()) -> list[FitResult]:
        """Greedy forward selection from ``start`` (default: the empty rule) up to max_terms terms: the ``trials``
        candidates of largest |t_r| are each refit briefly (``trial_evals``) and the one with the lowest
        meta-objective on the common episodes joins (a score test alone cannot tell apart terms that all shrink W
        at first: decay, (yᵀy) W and y yᵀW); the support is then refit (``fit_evals``)."""
        support, theta, fits = list(start), {}, []
        if support:
            fits.append(self.fit(support, {}, f"fit {len(support)} terms"))
            theta = fits[-1].theta
        k_max = min(self.cfg.max_terms, len(self.pool))
        while len(support) < k_max and not self._stop():
            scores = self.screen(theta, f"screen for term {len(support) + 1}")["scores"]
            candidates = {t: abs(s) for t, s in scores.items() if t not in support and math.isfinite(s)}
            if not candidates:
                break
            ranked = sorted(candidates, key=candidates.get, reverse=True)[:max(1, self.cfg.trials)]
            start_theta = theta
            if len(ranked) > 1 and self.cfg.trial_evals > 0:
                trial = {}
                for cand in ranked:
                    res = self.fit([*support, cand], theta, f"trial {len(support) + 1}", self.cfg.trial_evals,
                                   report=False)
                    trial[cand] = (res.extra.get("train_loss", math.inf), res.theta)
                    if self._stop():
                        return fits
                self.screens[-1]["trials"] = {c: v[0] for c, v in trial.items()}
                best = min(trial, key=lambda c: trial[c][0])
                support, start_theta = [*support, best], trial[best][1]
            else:
                support = [*support, ranked[0]]
            fits.append(self.fit(support, start_theta, f"forward {len(support)} terms"))
            theta = fits[-1].theta
        return fits

    def backward_elimination(self, fit: FitResult) -> list[FitResult]:
        """From the largest support down to one term: refit with each term removed in turn (warm start) and keep
        the removal whose refit has the lowest meta-objective; every support on the way is returned."""
        fits, current = [], fit
        while len(current.terms) > 1 and not self._stop():
            tried = []
            for drop in current.terms:
                rest = [t for t in current.terms if t != drop]
                theta = {t: current.theta[t] for t in rest}
                tried.append(self.fit(rest, theta, f"backward {len(rest)} terms"))
                if self._stop():
                    return fits
            current = min(tried, key=lambda f: f.extra.get("train_loss", math.inf))
            fits.extend(tried)
        return fits

    def score(self, fits: Sequence[FitResult]) -> tuple[list[FrontPoint], list[dict[str, Any]]]:
        """Every distinct support's best fit (lowest meta-objective on the common episodes) scored on the same
        held-out episodes; the selected one marked."""
        by_support: dict[tuple[str, ...], FitResult] = {}
        for f in fits:
            key = tuple(sorted(f.terms))
            if key not in by_support or f.extra.get("train_loss", math.inf) < \
                    by_support[key].extra.get("train_loss", math.inf):
                by_support[key] = f
        front, evaluations = [], []
        for f in sorted(by_support.values(), key=lambda f: (len(f.terms), complexity(f.terms))):
            point, evaluation = self.front_point(f, self.trainer)
            front.append(point)
            evaluations.append(evaluation)
        if front:
            front[select(front)].selected = True
        return front, evaluations

    def front_point(self, f: FitResult, trainer: UnsupervisedTrainer, stage: str | None = None
                    ) -> tuple[FrontPoint, dict[str, Any]]:
        """The front point of a fit, with its held-out evaluation at the trainer's horizon and after each pass."""
        ev: Evaluation = trainer.evaluate(f.theta, self.cfg.eval_episodes, self.cfg.passes)
        objective = trainer.cfg.objective
        if objective == "subspace":
            score, ci = 1.0 - ev.subspace, ev.subspace_ci95
        else:
            score, ci = 1.0 - ev.recon, ev.recon_ci95
        score = score if math.isfinite(score) else None
        rule = UnsupervisedRule(f.theta)
        metrics = {"objective": objective, "horizon": trainer.cfg.unroll, "heldout_reconstruction": ev.recon,
                   "heldout_reconstruction_ci95": ev.recon_ci95, "subspace_error": ev.subspace,
                   "subspace_error_ci95": ev.subspace_ci95, "subspace_error_passes": ev.subspace_passes,
                   "heldout_reconstruction_passes": ev.recon_passes, "oja_ratio": oja_ratio(f.theta),
                   "ww_eigenvalues": ev.ww_eigenvalues, "diverged": ev.diverged,
                   "train_meta_loss": f.extra.get("train_loss")}
        point = FrontPoint(terms=f.terms, theta=f.theta,
                           rule={**rule.to_dict(), "coefficients_raw": f.theta, "metrics": metrics},
                           n_terms=len(f.terms), complexity=complexity(f.terms), heldout_accuracy=score,
                           heldout_ci95=ci if ci is not None and math.isfinite(ci) else None,
                           heldout_episodes=ev.episodes,
                           stage=stage or (f.history[-1]["phase"] if f.history else "fit"))
        evaluation = {"terms": f.terms, "names": [UNSUPERVISED_TERMS[t].name for t in f.terms], **metrics,
                      "subspace_error_passes_ci95": ev.subspace_passes_ci95}
        return point, evaluation

    def final_refit(self, point: FrontPoint) -> tuple[FitResult, FrontPoint, dict[str, Any]]:
        """The selected support refit alone at the final horizon T_f with the full budget (warm start at θ·T/T_f:
        the same total movement over the longer unroll) on ``final_episodes`` common episodes."""
        T, Tf = self.trainer.cfg.unroll, self.cfg.final_unroll or self.trainer.cfg.unroll
        trainer = self.trainer
        if Tf != T:
            trainer = UnsupervisedTrainer(self.trainer.data, self.pool, replace(self.trainer.cfg, unroll=Tf),
                                          seed=self.cfg.seed, dtype=self.trainer.dtype)
        theta = {t: v * T / Tf for t, v in point.theta.items()}
        fit = self.fit(point.terms, theta, f"final refit {len(point.terms)} terms (T={Tf})", self.cfg.final_evals,
                       trainer=trainer, episodes=self.cfg.final_episodes)
        new_point, evaluation = self.front_point(fit, trainer, stage=fit.history[-1]["phase"] if fit.history
                                                 else "final refit")
        return fit, new_point, evaluation

    def run(self, start: Sequence[str] = ()) -> SearchOutcome:
        if self.cfg.method == "forward":
            fits = self.forward(start)
            if self.cfg.backward and fits and not self.stopped:
                fits += self.backward_elimination(max(fits, key=lambda f: len(f.terms)))
        else:
            fits = [self.fit(list(start), {}, "fit")]
        if self.stopped:
            return SearchOutcome(front=[], fits=fits, screens=self.screens, evaluations=[], history=self.history,
                                 episodes=self.used, stopped=True)
        front, evaluations = self.score(fits)
        extra: dict[str, Any] = {}
        chosen = next((i for i, p in enumerate(front) if p.selected), None)
        if chosen is not None and self.cfg.final_evals > 0:
            fit, point, evaluation = self.final_refit(front[chosen])
            if not self.stopped:
                extra["search_point"] = evaluations[chosen]
                point.selected = True
                front[chosen], evaluations[chosen] = point, {**evaluation, "final_refit": True}
                fits.append(fit)
        return SearchOutcome(front=front, fits=fits, screens=self.screens, evaluations=evaluations,
                             history=self.history, episodes=self.used, stopped=self.stopped, extra=extra)


def configs_from_spec(spec: Any) -> tuple[InnerConfig, SearchConfig]:
    """The inner-loop and search settings of a DiscoverySpec of task kind "pca": the largest per-support budget
    ``fit_evals`` (trial fits a third of it, the final refit twice it on twice the episodes) whose planned episodes
    fit in meta.episodes."""
    rule, meta, search = spec.rule, spec.meta, spec.search
    inner = InnerConfig(k=spec.network.widths[-1], unroll=rule.unroll, init_norm=rule.init_norm,
                        objective=rule.objective, checkpoints=rule.checkpoints)
    method = "forward" if search.active else "none"
    max_terms = search.max_terms if search.active else len(rule.terms or [])

    def make(f: int) -> SearchConfig:
        return SearchConfig(method=method, max_terms=max_terms, screen_episodes=search.screen_episodes,
                            fit_evals=f, trial_evals=max(1, f // 3), fit_episodes=meta.meta_batch,
                            final_evals=2 * f, final_episodes=2 * meta.meta_batch,
                            final_unroll=getattr(rule, "final_unroll", None),
                            eval_episodes=search.front_eval_episodes or meta.eval_episodes or 1,
                            passes=rule.passes, seed=meta.seed)

    f = 1
    while f < 200 and UnsupervisedSearch.planned_episodes(make(f + 1)) <= meta.episodes:
        f += 1
    return inner, make(f)


def discover_unsupervised(spec: Any, progress: Callable[[ProgressEvent], None] | None = None,
                          checkpoint_dir: Path | str | None = None,
                          should_stop: Callable[[], bool] | None = None) -> DiscoveryResult:
    """Run the unsupervised family for a DiscoverySpec (task kind "pca"): the open forward search over the rule's
    pool (search.method forward), or a fit of the named terms (method none). No checkpoints: a restarted job
    starts again (``checkpoint_dir`` is accepted for the engine's signature)."""
    t0 = time.perf_counter()
    torch.manual_seed(spec.meta.seed)
    inner, cfg = configs_from_spec(spec)
    data = load_pca_data(spec.task.dataset, spec.task.heldout_fraction)
    pool = list(spec.rule.terms or [])
    trainer = UnsupervisedTrainer(data, pool, inner, seed=spec.meta.seed)
    search = UnsupervisedSearch(trainer, cfg, progress, should_stop, total_episodes=spec.meta.episodes)
    start = () if cfg.method == "forward" else pool
    outcome = search.run(start)
    return to_result(spec.model_dump(), outcome, cfg, pool, data.best_reconstruction(inner.k),
                     time.perf_counter() - t0)


def to_result(spec_dict: dict[str, Any], outcome: SearchOutcome, cfg: SearchConfig, pool: list[str],
              best_reconstruction: float, wall_time_s: float) -> DiscoveryResult:
    """The DiscoveryResult of a search outcome (the selected front point is the rule)."""
    chosen = next((p for p in outcome.front if p.selected), None)
    last = outcome.fits[-1] if outcome.fits else None
    theta = chosen.theta if chosen else (last.theta if last else {})
    rule = chosen.rule if chosen else ({**UnsupervisedRule(theta).to_dict(), "coefficients_raw": theta}
                                       if theta else {})
    return DiscoveryResult(
        rule=rule, theta=theta, history=outcome.history, theta_history=[h["theta"] for h in outcome.history],
        heldout_accuracy=chosen.heldout_accuracy if chosen else None,
        heldout_ci95=chosen.heldout_ci95 if chosen else None,
        heldout_episodes=chosen.heldout_episodes if chosen else 0,
        diverged_episodes=sum(f.dropped_episodes for f in outcome.fits),
        skipped_steps=sum(f.skipped_steps for f in outcome.fits), stopped=outcome.stopped,
        wall_time_s=wall_time_s, device="cpu", spec=spec_dict, front=outcome.front,
        search={"family": "unsupervised", "method": cfg.method, "pool": pool, "episodes": outcome.episodes,
                "objective": (outcome.evaluations[0]["objective"] if outcome.evaluations else None),
                "score": "1 - held-out normalized reconstruction error (reconstruction) or 1 - subspace error "
                         "(subspace), at the meta-training horizon",
                "best_reconstruction": best_reconstruction,
                "stages": [{"label": f.history[-1]["phase"] if f.history else "fit", "kind": "fit",
                            "terms": f.terms, "steps": f.steps} for f in outcome.fits],
                "screening": outcome.screens, "evaluations": outcome.evaluations})
