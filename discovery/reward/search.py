"""Open search over the reward library (docs/reward.md): screening → forward selection with CMA-ES refits → a
(score, number of terms) front → selection, run by the generic search (discovery.search.generic: its stage log,
resume, front and selection) with :class:`RewardBackend` as the family's side.

The objective (test-phase deviation after training with sampled exploration noise) is not differentiable, so θ is
fitted gradient-free by CMA-ES (the ``cma`` package) in scaled coordinates θ_k = s_k φ_k, s_k = η₀ ‖F_rmhl‖/‖F_k‖
(η₀ = 5κ, the seed's RMHL rate; norms at the start of learning, discovery.reward.sim.per_step_norms), so one step
size fits every term. Every evaluation uses the same search seeds and noise (common random numbers: a deterministic
objective). Stages, all batched as candidates × seeds in one simulation per generation:

1. screening: every pool term alone at φ ∈ ±grid (one simulation) → the terms ranked by their best score;
2. size 1: the best term, its φ refined on a finer grid (one simulation);
3. size k + 1: the ``top_m`` best-screened terms not in the support are each added (φ_new = 0) and the support
   refit by CMA-ES (``generations`` × ``popsize``; the ``top_m`` instances run in lockstep, one simulation per
   generation); the lowest-deviation support joins the front; up to ``max_terms`` terms;
4. every front point is scored on held-out seeds on the score protocol (`shortened`), score = 1 − deviation with
   its 95 % t half-width; the simplest point within the best's CI is selected (PySR's convention,
   discovery.search.generic.select).

In the generic search these are a gradient-free screening (``screen_stage``: score −best deviation, θ of each
term's best lone trial), the first fit (``fit_stage`` of one term: the grid refinement), ``top_m`` trials at once
(``fit_trials``: the lockstep CMA-ES) never refit, and one batched front scoring (``front_points``). A stage is
counted in simulation calls (the job's "episodes"). Every stage is deterministic (common random numbers, seeded
CMA-ES), so a resumed search ends with the same front.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from discovery.analysis.stats import t_interval
from discovery.reservoir.model import KAPPA
from discovery.results import FrontPoint, ProgressEvent
from discovery.reward.sim import RewardEnv, per_step_norms, simulate
from discovery.search.generic import FamilySearch, FitOutcome, ScreenOutcome, SearchPlan, Stage, select
from discovery.spec import DiscoverySpec
from rules.reward import REWARD_TERMS, RMHL, RewardRule

ETA0 = 5 * KAPPA


@dataclass(frozen=True)
class RewardSearchConfig:
    """Budget and settings of the search (see the module docstring)."""

    method: str = "forward"                      # "forward" or "none" (fit the given terms)
    max_terms: int = 3
    grid: tuple[float, ...] = (1.0, 4.0, 16.0)   # |φ| of the screening, both signs
    refine: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0)
    top_m: int = 3
    popsize: int = 6
    generations: int = 4
    search_seeds: tuple[int, ...] = (0, 1)
    eval_seeds: tuple[int, ...] = (500, 501, 502)
    screen_seeds: int = 1                        # the first search seeds used by the screening


@dataclass
class Fit:
    terms: list[str]
    theta: dict[str, float]
    train_deviation: float
    stage: str
    evaluations: int


@dataclass
class SearchLog:
    history: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    screening: dict[str, Any] = field(default_factory=dict)
    simulations: int = 0
    reservoir_steps: int = 0


def complexity(terms: Sequence[str]) -> int:
    """Σ over the terms of their non-trivial factors ((R − R̄)(z − z̄) rᵀ = 3, z 1ᵀ = 1)."""
    return sum(sum(p != "one" for p in (REWARD_TERMS[t].third, REWARD_TERMS[t].post, REWARD_TERMS[t].pre))
               for t in terms)


class RewardSearch:
    """Runs the stages of the module docstring for one search env (fast protocol) and one score env."""

    def __init__(self, env: RewardEnv, score_env: RewardEnv, pool: Sequence[str], cfg: RewardSearchConfig,
                 progress: Callable[[ProgressEvent], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.env, self.score_env, self.pool, self.cfg = env, score_env, list(pool), cfg
        self.progress, self.should_stop = progress, should_stop
        self.log = SearchLog()
        self.stopped = False
        self.step = 0
        self.total = self.planned_simulations()
        t0 = time.perf_counter()
        norms = per_step_norms(env, [*self.pool, RMHL], cfg.search_seeds[:1])
        self.scale = {t: ETA0 * float(norms[-1]) / max(float(n), 1e-12) for t, n in zip(self.pool, norms[:-1],
                                                                                          strict=True)}
        self.log.timing["norms_s"] = time.perf_counter() - t0

    def planned_simulations(self) -> int:
        """Simulation calls the search plans (screening, refinement, generations, front scoring)."""
        if self.cfg.method != "forward":
            return self.cfg.generations + 2
        return 2 + (self.cfg.max_terms - 1) * self.cfg.generations + 1

    def _stop(self) -> bool:
        self.stopped = self.stopped or bool(self.should_stop and self.should_stop())
        return self.stopped

    def run_batch(self, terms: Sequence[str], phis: np.ndarray, seeds: Sequence[int], label: str,
                  env: RewardEnv | None = None) -> np.ndarray:
        """Mean deviation over ``seeds`` of each row of φ (C, K) over ``terms`` (θ = s ⊙ φ)."""
        env = env or self.env
        s = np.array([self.scale[t] for t in terms])
        c0 = time.process_time()
        res = simulate(env, list(terms), torch.tensor(phis * s), list(seeds))
        self.log.timing["cpu_s"] = self.log.timing.get("cpu_s", 0.0) + time.process_time() - c0
        self.log.simulations += 1
        self.log.reservoir_steps += res.steps * phis.shape[0] * len(seeds)
        dev = res.deviation.mean(1).numpy()
        self.step += 1
        best = int(np.argmin(dev))
        theta = {t: float(v) for t, v in zip(terms, phis[best] * s, strict=True)}
        record = {"episode": self.step, "total": self.total, "meta_loss": float(dev[best]), "meta_accuracy": None,
                  "theta": theta, "phase": label, "lr": None}
        self.log.history.append({**record, "wall_s": res.wall_s, "candidates": int(phis.shape[0])})
        if self.progress is not None:
            self.progress(ProgressEvent(**record))
        return dev

    def screen(self, label: str = "screening") -> list[str]:
        """Every pool term alone on ±grid; the pool ranked by its best deviation."""
        t0 = time.perf_counter()
        grid = [g * sgn for g in self.cfg.grid for sgn in (1.0, -1.0)]
        K = len(self.pool)
        phis = np.zeros((K * len(grid), K))
        for k in range(K):
            for j, g in enumerate(grid):
                phis[k * len(grid) + j, k] = g
        dev = self.run_batch(self.pool, phis, self.cfg.search_seeds[:self.cfg.screen_seeds], label)
        per = dev.reshape(K, len(grid))
        best = {t: (float(per[k].min()), grid[int(per[k].argmin())]) for k, t in enumerate(self.pool)}
        self.log.screening = {"grid": grid, "deviation": {t: per[k].tolist() for k, t in enumerate(self.pool)},
                              "best": {t: {"deviation": v[0], "phi": v[1]} for t, v in best.items()},
                              "names": {t: REWARD_TERMS[t].name for t in self.pool}}
        self.best_phi = {t: v[1] for t, v in best.items()}
        self.log.timing["screening_s"] = time.perf_counter() - t0
        return sorted(self.pool, key=lambda t: best[t][0])

    def refine_one(self, term: str, phi0: float, label: str = "fit 1 term") -> Fit:
        """φ of a one-term rule on a finer grid around φ0 (search seeds)."""
        phis = np.array([[phi0 * m] for m in self.cfg.refine])
        dev = self.run_batch([term], phis, self.cfg.search_seeds, label)
        j = int(np.argmin(dev))
        return Fit([term], {term: float(phis[j, 0] * self.scale[term])}, float(dev[j]), label,
                   len(self.cfg.refine))

    def cma_fits(self, support: Fit, candidates: Sequence[str], label: str) -> list[Fit]:
        """CMA-ES refits of support + each candidate (new φ from 0), the instances in lockstep."""
        import cma

        terms_all = [*support.terms, *candidates]
        base = [support.theta[t] / self.scale[t] for t in support.terms]
        stds = [max(0.5 * abs(p), 0.5) for p in base] + [float(np.median(self.cfg.grid))]
        ess = []
        for j, c in enumerate(candidates):
            opts = {"popsize": self.cfg.popsize, "CMA_stds": stds, "seed": 1 + 7919 * j + len(support.terms),
                    "verbose": -9, "maxiter": self.cfg.generations}
            ess.append((c, cma.CMAEvolutionStrategy([*base, 0.0], 1.0, opts)))
        best: dict[str, tuple[float, np.ndarray]] = {c: (math.inf, np.array([*base, 0.0])) for c in candidates}
        for g in range(self.cfg.generations):
            if self._stop():
                break
            asked = [(c, es.ask()) for c, es in ess]
            rows = []
            for c, xs in asked:
                for xv in xs:
                    row = np.zeros(len(terms_all))
                    row[:len(base)] = xv[:len(base)]
                    row[terms_all.index(c)] = xv[-1]
                    rows.append(row)
            dev = self.run_batch(terms_all, np.array(rows), self.cfg.search_seeds, f"{label} (generation {g + 1})")
            i = 0
            for (c, xs), (_, es) in zip(asked, ess, strict=True):
                vals = dev[i:i + len(xs)].tolist()
                i += len(xs)
                es.tell(xs, vals)
                k = int(np.argmin(vals))
                if vals[k] < best[c][0]:
                    best[c] = (vals[k], np.asarray(xs[k]))
        fits = []
        for c in candidates:
            val, xv = best[c]
            terms = [*support.terms, c]
            theta = {t: float(v * self.scale[t]) for t, v in zip(terms, xv, strict=True)}
            fits.append(Fit(terms, theta, val, label, self.cfg.generations * self.cfg.popsize))
        return fits

    def fit_given(self) -> list[Fit]:
        """method none: the given terms, started from the screening-free φ = 1 and refit by CMA-ES (one term: a
        grid)."""
        terms = self.pool
        self.best_phi = {t: 1.0 for t in terms}
        t0 = time.perf_counter()
        fit = self.refine_one(terms[0], 1.0) if len(terms) == 1 else None
        if fit is None:
            start = Fit(terms[:-1], {t: self.scale[t] for t in terms[:-1]}, math.inf, "start", 0)
            fit = self.cma_fits(start, [terms[-1]], f"fit {len(terms)} terms")[0]
        self.log.timing["fit_s"] = time.perf_counter() - t0
        return [fit]

    def score_front(self, fits: Sequence[Fit]) -> list[FrontPoint]:
        """Each distinct support's lowest-deviation fit scored (``score_fits``), ordered by size and complexity,
        the selected point marked."""
        by_support: dict[tuple[str, ...], Fit] = {}
        for f in fits:
            key = tuple(sorted(f.terms))
            if key not in by_support or f.train_deviation < by_support[key].train_deviation:
                by_support[key] = f
        front = self.score_fits(sorted(by_support.values(), key=lambda f: (len(f.terms), complexity(f.terms))))
        if front:
            front[select(front)].selected = True
        return front

    def score_fits(self, kept: Sequence[Fit]) -> list[FrontPoint]:
        """The fits scored on the held-out seeds on the score protocol, in one simulation."""
        t0 = time.perf_counter()
        terms_all = list(dict.fromkeys(t for f in kept for t in f.terms))
        thetas = torch.tensor([[f.theta.get(t, 0.0) for t in terms_all] for f in kept], dtype=torch.float64)
        c0 = time.process_time()
        res = simulate(self.score_env, terms_all, thetas, list(self.cfg.eval_seeds))
        self.log.timing["front_cpu_s"] = self.log.timing.get("front_cpu_s", 0.0) + time.process_time() - c0
        self.log.simulations += 1
        self.log.reservoir_steps += res.steps * len(kept) * len(self.cfg.eval_seeds)
        front = []
        for i, f in enumerate(kept):
            devs = res.deviation[i].tolist()
            mean, lo, hi = t_interval(devs)
            rule = RewardRule(f.theta)
            metrics = {"deviation": mean, "deviation_ci95": [lo, hi], "deviation_per_seed": devs,
                       "n_satisfactory": int(sum(v < 0.5 for v in devs)), "diverged": int(res.diverged[i].sum()),
                       "train_deviation": f.train_deviation, "task": self.score_env.task,
                       "score_protocol": self.score_env.protocol, "search_protocol": self.env.protocol,
                       "N": self.score_env.N, "eval_seeds": list(self.cfg.eval_seeds),
                       "contains_rmhl": RMHL in f.terms, "rmhl_coefficient": f.theta.get(RMHL)}
            front.append(FrontPoint(
                terms=f.terms, theta=f.theta, rule={**rule.to_dict(), "coefficients_raw": f.theta, "metrics": metrics},
                n_terms=len(f.terms), complexity=complexity(f.terms), heldout_accuracy=1.0 - mean,
                heldout_ci95=(hi - lo) / 2 if len(devs) > 1 else None, heldout_episodes=len(devs), stage=f.stage))
        self.log.timing["front_scoring_s"] = self.log.timing.get("front_scoring_s", 0.0) + time.perf_counter() - t0
        return front

    def spec(self) -> DiscoverySpec:
        """The job spec of this search's envs and config (what the stage log is keyed on; the seeds of the config
        are the spec's when they follow discovery.reward.job.config_from_spec)."""
        e, c = self.env, self.cfg
        rule = {"family": "reward", "terms": self.pool, "motor_task": e.task, "N": e.N,
                "search_protocol": e.protocol, "score_protocol": self.score_env.protocol,
                "periods_train": e.periods_train, "periods_test": e.periods_test, "period_steps": e.period_steps,
                "reward_tau": e.reward_tau, "trace_tau": e.trace_tau, "shaping": e.shaping, "grid": list(c.grid),
                "popsize": c.popsize, "generations": c.generations, "top_m": c.top_m,
                "search_seeds": len(c.search_seeds), "eval_seeds": len(c.eval_seeds)}
        return DiscoverySpec.model_validate({"task": {"kind": "reservoir-motor"}, "rule": rule,
                                             "meta": {"seed": c.search_seeds[0] // 10_000},
                                             "search": {"method": c.method, "max_terms": c.max_terms}})

    def run(self, checkpoint_dir: Path | str | None = None) -> tuple[list[FrontPoint], list[Fit]]:
        """The generic search with this engine as its backend: (front, the fits on the way)."""
        search = FamilySearch(self.spec(), RewardBackend(self), self.progress, checkpoint_dir, self.should_stop)
        front, fits = search.run()
        return front, [as_fit(f) for f in fits]


def as_fit(stage: Stage) -> Fit:
    """A generic fit stage as the reward family's Fit (its training deviation is the stage's loss)."""
    return Fit(stage.terms, stage.theta, stage.loss if stage.loss is not None else math.inf, stage.label,
               stage.episodes)


class RewardBackend:
    """discovery.search.generic.SearchBackend of the reward family: gradient-free (CMA-ES) fits on the engine
    :class:`RewardSearch` (see the module docstring). A stage's "episodes" are its simulation calls."""

    base_terms: tuple[str, ...] = ()
    methods = ("forward",)

    def __init__(self, engine: RewardSearch) -> None:
        self.engine = engine

    def plan(self, spec: DiscoverySpec) -> SearchPlan:
        return SearchPlan(trials=self.engine.cfg.top_m, refit_trial=False, rescreen=False,
                          budget=self.engine.planned_simulations())

    def _begin(self, report: Callable[[ProgressEvent], None], should_stop: Callable[[], bool] | None = None
               ) -> int:
        """Route the engine's progress to this stage's reporter; the index of its first history record."""
        eng = self.engine
        eng.step, eng.progress = 0, report
        if should_stop is not None:
            eng.should_stop = should_stop
        return len(eng.log.history)

    def screen_stage(self, spec: DiscoverySpec, theta: dict[str, float], label: str,
                     report: Callable[[ProgressEvent], None]) -> ScreenOutcome:
        """Every pool term alone on ±grid (one simulation): score −(its best deviation), θ at its best."""
        eng = self.engine
        n0 = self._begin(report)
        eng.screen(label)
        best = eng.log.screening["best"]
        return ScreenOutcome(scores={t: -best[t]["deviation"] for t in eng.pool}, episodes=eng.step,
                             best_theta={t: eng.best_phi[t] * eng.scale[t] for t in eng.pool},
                             history=eng.log.history[n0:])

    def _outcome(self, fit: Fit, n0: int, first: bool = True) -> FitOutcome:
        eng = self.engine
        return FitOutcome(theta=fit.theta, episodes=eng.step if first else 0, loss=fit.train_deviation,
                          history=eng.log.history[n0:] if first else [])

    def fit_stage(self, spec: DiscoverySpec, terms: list[str], theta: dict[str, float], role: str, label: str,
                  report: Callable[[ProgressEvent], None], should_stop: Callable[[], bool]) -> FitOutcome:
        """One term: φ refined on a grid around θ/s; more: CMA-ES from θ with the last term at 0 (``fixed``: the
        given terms from φ = 1)."""
        eng = self.engine
        n0, t0 = self._begin(report, should_stop), time.perf_counter()
        if role == "fixed":
            fit = eng.fit_given()[0]
        elif len(terms) == 1:
            fit = eng.refine_one(terms[0], theta[terms[0]] / eng.scale[terms[0]], label)
        else:
            support = Fit(terms[:-1], {t: theta[t] for t in terms[:-1]}, math.inf, label, 0)
            fit = eng.cma_fits(support, [terms[-1]], label)[0]
        eng.log.timing[f"fit_{len(terms)}_s"] = time.perf_counter() - t0
        return self._outcome(fit, n0)

    def fit_trials(self, spec: DiscoverySpec, support: list[str], theta: dict[str, float], candidates: list[str],
                   label: str, report: Callable[[ProgressEvent], None], should_stop: Callable[[], bool]
                   ) -> list[FitOutcome]:
        """CMA-ES refits of support + each candidate in lockstep (one simulation per generation); the simulations
        and history are counted on the first trial."""
        eng = self.engine
        n0, t0 = self._begin(report, should_stop), time.perf_counter()
        fits = eng.cma_fits(Fit(list(support), {t: theta[t] for t in support}, math.inf, label, 0), candidates,
                            label)
        eng.log.timing[f"fit_{len(support) + 1}_s"] = time.perf_counter() - t0
        return [self._outcome(f, n0, first=i == 0) for i, f in enumerate(fits)]

    def front_points(self, spec: DiscoverySpec, fits: list[Stage], role: str) -> list[FrontPoint]:
        return self.engine.score_fits([as_fit(f) for f in fits])

    def rule(self, terms: list[str], theta: dict[str, float], name: str | None = None) -> dict[str, Any]:
        return {**RewardRule(theta).to_dict(), "coefficients_raw": theta}

    def complexity(self, terms: list[str]) -> int:
        return complexity(terms)

    def device(self, spec: DiscoverySpec) -> str:
        return "cpu"

    def result_extra(self, spec: DiscoverySpec, search: FamilySearch, front: list[FrontPoint]) -> dict[str, Any]:
        """The family's keys of the result's ``search``: names, score, protocols, this attempt's timing and
        simulation counts, the screening grid (when this attempt screened), whether RMHL was selected."""
        eng = self.engine
        chosen = next((p for p in front if p.selected), None)
        return {"family": "reward", "names": {t: REWARD_TERMS[t].name for t in eng.pool},
                "score": "1 − test-phase deviation on the score protocol, held-out seeds",
                "search_protocol": eng.env.protocol, "score_protocol": eng.score_env.protocol, "N": eng.env.N,
                "timing": eng.log.timing, "simulations": eng.log.simulations,
                "reservoir_steps": eng.log.reservoir_steps,
                **({"screening_grid": eng.log.screening} if eng.log.screening else {}),
                "rmhl_in_selected": bool(chosen and RMHL in chosen.terms)}


def tiny_env(env: RewardEnv) -> RewardEnv:
    """The same env at test size (N = 60, 2 + 1 periods of 300 steps)."""
    return replace(env, N=60, periods_train=2, periods_test=1, period_steps=300)
