"""Open search over the unsupervised library: the unsupervised side of discovery.search.generic (its stages,
stage log and resume, front and selection), with L-BFGS fits.

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
front point. These are the generic search's stages with :class:`UnsupervisedBackend`'s plan (trials, elimination,
final refit); a restarted job replays its finished stages from ``checkpoint_dir`` (the screenings' episode stream
from ``stage_<i>/screener.pt``) and ends with the same front.
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
from discovery.search.generic import FamilySearch, FitOutcome, SearchPlan, Stage, search_result
from discovery.spec import DiscoverySpec
from discovery.unsupervised.data import load_pca_data
from discovery.unsupervised.terms import OJA_DECAY, OJA_HEBB
from discovery.unsupervised.trainer import Evaluation, FitResult, InnerConfig, UnsupervisedTrainer
from rules.unsupervised import UNSUPERVISED_TERMS, UnsupervisedRule

FIT_SEED = 50_000          # the common episodes of every search fit: seed FIT_SEED + 97 · meta.seed


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

    def planned_episodes(self) -> int:
        """Episodes the search plans to use (an upper bound: L-BFGS may stop early)."""
        if self.method != "forward":
            return (self.fit_evals + self.final_evals) * self.fit_episodes
        per_stage = self.screen_episodes + (self.trials * self.trial_evals + self.fit_evals) * self.fit_episodes
        backward = (self.max_terms * (self.max_terms - 1) // 2) * self.fit_evals * self.fit_episodes \
            if self.backward else 0
        return self.max_terms * per_stage + backward + self.final_evals * self.final_episodes


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


class _Screener:
    """The generic screener's view of the search trainer: ``phi`` is the pool's θ itself (``scale`` 1; the score
    test is invariant to a term's scale), ``spec`` keys its saved episode stream."""

    def __init__(self, trainer: UnsupervisedTrainer, spec: DiscoverySpec) -> None:
        self.trainer, self.spec, self.dtype = trainer, spec, trainer.dtype
        self.scale = torch.ones(len(trainer.pool), dtype=trainer.dtype)
        self.phi = torch.zeros(len(trainer.pool), dtype=trainer.dtype)


class UnsupervisedBackend:
    """discovery.search.generic.SearchBackend of the unsupervised family (see the module docstring): L-BFGS fits
    (``fit_stage``), the score test from reverse-mode per-episode gradients, held-out front scoring with the
    family's metrics (``front_points``)."""

    base_terms: tuple[str, ...] = ()
    methods = ("forward",)

    def __init__(self, spec: DiscoverySpec, cfg: SearchConfig, trainer: UnsupervisedTrainer,
                 budget: int | None = None) -> None:
        self.cfg, self.search_trainer, self.pool = cfg, trainer, trainer.pool
        self.budget = budget or spec.meta.episodes
        self.fit_seed = FIT_SEED + 97 * cfg.seed
        self._final: UnsupervisedTrainer | None = None

    @classmethod
    def from_spec(cls, spec: DiscoverySpec) -> UnsupervisedBackend:
        inner, cfg = configs_from_spec(spec)
        data = load_pca_data(spec.task.dataset, spec.task.heldout_fraction)
        return cls(spec, cfg, UnsupervisedTrainer(data, list(spec.rule.terms or []), inner, seed=spec.meta.seed))

    def plan(self, spec: DiscoverySpec) -> SearchPlan:
        cfg = self.cfg
        return SearchPlan(trials=cfg.trials if cfg.trial_evals > 0 else 1, first_by_trials=True,
                          eliminate=cfg.backward, final_refit=cfg.final_evals > 0, budget=self.budget)

    def subspec(self, spec: DiscoverySpec, terms: list[str], theta: dict[str, float], episodes: int,
                **meta: Any) -> DiscoverySpec:
        data = spec.model_dump()
        data["rule"].update({"terms": terms, "theta_init": {t: theta.get(t, 0.0) for t in terms}, "pool": None})
        data["meta"].update({"episodes": max(1, episodes), **meta})
        data["search"], data["sweep"] = {"method": "none"}, {}
        return DiscoverySpec.model_validate(data)

    # ------------------------------------------------------------------ screening (the generic score test)
    def trainer(self, spec: DiscoverySpec, stream: int = 0) -> _Screener:
        return _Screener(self.search_trainer, spec)

    def screen_gradients(self, screener: _Screener, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-episode objective (n,) and ∂L/∂φ_r (R, n) at θ = screener.phi over n fresh episodes."""
        losses, grad = self.search_trainer.per_episode_gradient(dict(zip(self.pool, screener.phi.tolist(), strict=True)), n)
        return losses, grad.T

    def norms(self, screener: _Screener) -> torch.Tensor:
        return self.search_trainer.scale

    def streams(self, screener: _Screener) -> dict[str, Any]:
        return {"gen": self.search_trainer.gen.get_state()}

    def set_streams(self, screener: _Screener, state: dict[str, Any]) -> None:
        self.search_trainer.gen.set_state(state["gen"])

    def redraw(self, screener: _Screener, n: int) -> None:
        self.search_trainer.sample_episodes(n)

    # ------------------------------------------------------------------ fits
    def final_trainer(self) -> UnsupervisedTrainer:
        """The trainer at the final horizon ``final_unroll`` (the search's own when it is the same)."""
        Tf = self.cfg.final_unroll or self.search_trainer.cfg.unroll
        if Tf == self.search_trainer.cfg.unroll:
            return self.search_trainer
        if self._final is None:
            self._final = UnsupervisedTrainer(self.search_trainer.data, self.pool, replace(self.search_trainer.cfg, unroll=Tf),
                                              seed=self.cfg.seed, dtype=self.search_trainer.dtype)
        return self._final

    def fit_stage(self, spec: DiscoverySpec, terms: list[str], theta: dict[str, float], role: str, label: str,
                  report: Callable[[ProgressEvent], None], should_stop: Callable[[], bool]) -> FitOutcome:
        """L-BFGS fit of ``terms`` warm started at θ (missing terms at 0) on the common episodes: ``trial_evals``
        evaluations for a trial (unreported), ``fit_evals`` for a fit, ``final_evals`` on ``final_episodes`` at the
        final horizon T_f for the final refit (warm start θ·T/T_f: the same total movement over the longer
        unroll)."""
        cfg, trainer, episodes = self.cfg, self.search_trainer, self.cfg.fit_episodes
        evals = cfg.trial_evals if role == "trial" else cfg.fit_evals
        if role == "final":
            trainer, episodes, evals = self.final_trainer(), cfg.final_episodes, cfg.final_evals
            theta = {t: v * self.search_trainer.cfg.unroll / trainer.cfg.unroll for t, v in theta.items()}
        history: list[dict[str, Any]] = []

        def on_step(event: dict[str, Any]) -> None:
            if role == "trial":
                return
            record = {"episode": event["step"] * episodes, "meta_loss": event["meta_loss"], "meta_accuracy": None,
                      "theta": event["theta"], "lr": event["lr"], "phase": label,
                      "dropped_episodes": event["dropped_episodes"], "skipped": event["skipped"]}
            history.append(record)
            report(ProgressEvent(**record, total=self.budget))

        result = trainer.fit_lbfgs(terms, {t: theta.get(t, 0.0) for t in terms}, evals, episodes=episodes,
                                   seed=self.fit_seed, label=label, on_step=on_step, should_stop=should_stop)
        return FitOutcome(theta=result.theta, episodes=result.steps * episodes, loss=result.extra.get("train_loss"),
                          history=history)

    # ------------------------------------------------------------------ scoring
    def front_points(self, spec: DiscoverySpec, fits: list[Stage], role: str) -> list[FrontPoint]:
        """Each fit's held-out evaluation at the search horizon (the final refit's at T_f) and after each pass."""
        trainer = self.final_trainer() if role == "final" else self.search_trainer
        return [self.front_point(f, trainer) for f in fits]

    def front_point(self, f: Stage, trainer: UnsupervisedTrainer) -> FrontPoint:
        """The front point of a fit: score 1 − held-out error of the objective at the trainer's horizon ± 95 %."""
        ev: Evaluation = trainer.evaluate(f.theta, self.cfg.eval_episodes, self.cfg.passes)
        objective = trainer.cfg.objective
        if objective == "subspace":
            score, ci = 1.0 - ev.subspace, ev.subspace_ci95
        else:
            score, ci = 1.0 - ev.recon, ev.recon_ci95
        metrics = {"objective": objective, "horizon": trainer.cfg.unroll, "heldout_reconstruction": ev.recon,
                   "heldout_reconstruction_ci95": ev.recon_ci95, "subspace_error": ev.subspace,
                   "subspace_error_ci95": ev.subspace_ci95, "subspace_error_passes": ev.subspace_passes,
                   "subspace_error_passes_ci95": ev.subspace_passes_ci95,
                   "heldout_reconstruction_passes": ev.recon_passes, "oja_ratio": oja_ratio(f.theta),
                   "ww_eigenvalues": ev.ww_eigenvalues, "diverged": ev.diverged, "train_meta_loss": f.loss}
        return FrontPoint(terms=f.terms, theta=f.theta, rule={**self.rule(f.terms, f.theta), "metrics": metrics},
                          n_terms=len(f.terms), complexity=complexity(f.terms),
                          heldout_accuracy=score if math.isfinite(score) else None,
                          heldout_ci95=ci if ci is not None and math.isfinite(ci) else None,
                          heldout_episodes=ev.episodes, stage=f.label)

    def rule(self, terms: list[str], theta: dict[str, float], name: str | None = None) -> dict[str, Any]:
        return {**UnsupervisedRule(theta).to_dict(), "coefficients_raw": theta}

    def complexity(self, terms: list[str]) -> int:
        return complexity(terms)

    def device(self, spec: DiscoverySpec) -> str:
        return "cpu"

    def result_extra(self, spec: DiscoverySpec, search: FamilySearch, front: list[FrontPoint]) -> dict[str, Any]:
        """The family's keys of the result's ``search``: objective, score, best reconstruction, every front point's
        evaluation and the selected point's before its final refit (``search_point``)."""
        return {"family": "unsupervised", "objective": self.search_trainer.cfg.objective,
                "score": "1 - held-out normalized reconstruction error (reconstruction) or 1 - subspace error "
                         "(subspace), at the meta-training horizon",
                "best_reconstruction": self.search_trainer.data.best_reconstruction(self.search_trainer.cfg.k),
                "evaluations": evaluations(front),
                **({"search_point": evaluations([search.refined])[0]} if search.refined is not None else {})}


def evaluations(front: list[FrontPoint]) -> list[dict[str, Any]]:
    """Every front point's held-out metrics with its terms and their names."""
    return [{"terms": p.terms, "names": [UNSUPERVISED_TERMS[t].name for t in p.terms], **(getattr(p.rule, "metrics", None) or {})}
            for p in front]


class UnsupervisedSearch:
    """The search for a trainer and a config without a job spec (experiments/unsupervised_search.py): the same
    generic stages as a job, returned as a :class:`SearchOutcome`."""

    def __init__(self, trainer: UnsupervisedTrainer, cfg: SearchConfig,
                 progress: Callable[[ProgressEvent], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, total_episodes: int | None = None) -> None:
        self.trainer, self.cfg, self.progress, self.should_stop = trainer, cfg, progress, should_stop
        self.total = total_episodes or cfg.planned_episodes()

    def spec(self) -> DiscoverySpec:
        """The job spec of this trainer and config (what the stage log is keyed on)."""
        inner = self.trainer.cfg
        return DiscoverySpec.model_validate({
            "task": {"kind": "pca", "dataset": self.trainer.data.name},
            "network": {"widths": [self.trainer.data.dim, inner.k]},
            "rule": {"family": "unsupervised", "terms": self.trainer.pool, "objective": inner.objective,
                     "unroll": inner.unroll, "passes": self.cfg.passes, "init_norm": inner.init_norm,
                     "checkpoints": inner.checkpoints, "final_unroll": self.cfg.final_unroll},
            "meta": {"seed": self.cfg.seed, "episodes": self.total, "meta_batch": self.cfg.fit_episodes,
                     "eval_episodes": self.cfg.eval_episodes},
            "search": {"method": self.cfg.method, "max_terms": self.cfg.max_terms,
                       "screen_episodes": self.cfg.screen_episodes, "front_eval_episodes": self.cfg.eval_episodes}})

    def run(self, checkpoint_dir: Path | str | None = None) -> SearchOutcome:
        spec = self.spec()
        backend = UnsupervisedBackend(spec, self.cfg, self.trainer, self.total)
        search = FamilySearch(spec, backend, self.progress, checkpoint_dir, self.should_stop)
        front, fits = search.run()
        return outcome(search, front, fits, self.cfg)


def outcome(search: FamilySearch, front: list[FrontPoint], fits: list[Stage], cfg: SearchConfig) -> SearchOutcome:
    """A finished generic search as the unsupervised SearchOutcome (fits as FitResults, screenings as dicts)."""
    def steps(s: Stage) -> int:
        return s.episodes // (cfg.final_episodes if s.label.startswith("final") else cfg.fit_episodes)

    results = [FitResult(terms=s.terms, theta=s.theta, steps=steps(s), history=s.history,
                         extra={"train_loss": s.loss}) for s in fits]
    screens = [{"label": s.label, "theta": s.theta, "episodes": s.episodes, "scores": s.scores}
               for s in search.stages if s.kind == "screen"]
    extra = {"search_point": evaluations([search.refined])[0]} if search.refined is not None else {}
    return SearchOutcome(front=front, fits=results, screens=screens, evaluations=evaluations(front),
                         history=search.history, episodes=search.used, stopped=search.stopped, extra=extra)


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
    while f < 200 and make(f + 1).planned_episodes() <= meta.episodes:
        f += 1
    return inner, make(f)


def discover_unsupervised(spec: Any, progress: Callable[[ProgressEvent], None] | None = None,
                          checkpoint_dir: Path | str | None = None,
                          should_stop: Callable[[], bool] | None = None) -> DiscoveryResult:
    """Run the unsupervised family for a DiscoverySpec (task kind "pca"): the open forward search over the rule's
    pool (search.method forward), or a fit of the named terms (method none), through the generic search; a
    restarted job with the same ``checkpoint_dir`` replays the finished stages."""
    t0 = time.perf_counter()
    torch.manual_seed(spec.meta.seed)
    backend = UnsupervisedBackend.from_spec(spec)
    search = FamilySearch(spec, backend, progress, checkpoint_dir, should_stop)
    front, fits = search.run()
    return search_result(spec, search, front, fits, t0)
