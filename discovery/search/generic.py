"""The open search, written once against the family contract (docs/architecture.md "the family contract").

A family hands the search a :class:`SearchBackend` (its trainer, per-episode meta-gradients, held-out evaluation,
rule and complexity); everything else is here and identical for every family:

* ``forward`` — greedy forward selection by **meta-gradient screening**: at the current support's θ (candidates at
  θ_r = 0) the per-episode meta-gradients g_r over n fresh episodes give Rao's score test t_r = ḡ_r / (s_r/√n)
  (invariant to the term's scale); the largest |t_r| joins and the support is refit warm-started; up to
  ``max_terms``. Start: the family's base term (feed-forward F0) when the pool has it, else the best-screened term
  at θ = 0.
* ``backward`` — fit the whole pool, drop the term of the smallest effect |θ_r|/s_r, refit, down to one term.
* ``path`` — proximal L1 along λ_k = λ_max · 2^{−k/2} from the sparse end with a KKT working set (families whose
  trainer has a proximal step: ``SearchBackend.methods``); each support it visits is refit without L1.

Every support's refit θ is scored on the same held-out episodes (paired), the front is the list of these rules and
the selected one is the simplest within the 95 % CI of the best (PySR's convention); ``none`` fits the given terms.

A family whose fit is not Adam on meta-gradients (L-BFGS on a sample average, CMA-ES on a non-differentiable
objective) supplies ``fit_stage`` (and ``screen_stage`` when its screening is not a score test, ``fit_trials`` when
it fits several trials at once, ``front_points`` when it scores a front in one go) and a :class:`SearchPlan`: how
many screened candidates are fitted on trial (the lowest training loss joins), whether the trial is refit, whether
to rescreen at every support, backward elimination after the forward pass (each term dropped in turn, the lowest
training loss kept), a final refit of the selected support. Defaults: the plain forward selection above.

Resume: finished stages are listed in ``checkpoint_dir/search.json`` and replayed; a fit stage checkpoints its
trainer (the family's save/load of its training state) in ``stage_<i>/``; a screen stage saves the screener's
random streams in ``stage_<i>/screener.pt``. A resumed search (same seed, same threads) ends with the same front, bit for bit.
The stage records, the backend protocol, the stage log (shared with discovery.transfer.search), the score test and
the selection rule are in discovery.search.stages.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from discovery.feedforward.checkpoint import load_checkpoint, save_checkpoint
from discovery.results import DiscoveryResult, FrontPoint, ProgressEvent
from discovery.search.stages import (
    KKT_Z,
    LAMBDA_RATIO,
    SCREENER_FILE,
    SCREENER_STREAM,
    STATE_FILE,
    FitOutcome,
    ScreenOutcome,
    SearchBackend,
    SearchPlan,
    SearchTrainer,
    Stage,
    StageLog,
    kkt_violation,
    lambda_max,
    score_test,
    select,
    training_loss,
)
from discovery.spec import DiscoverySpec

__all__ = ["KKT_Z", "LAMBDA_RATIO", "SCREENER_FILE", "SCREENER_STREAM", "STATE_FILE", "FamilySearch", "FitOutcome",
           "ScreenOutcome", "SearchBackend", "SearchPlan", "SearchTrainer", "Stage", "StageLog", "run_search",
           "score_test", "search_result", "select"]

class FamilySearch(StageLog):
    """Runs one of the searches of the module docstring for a spec whose rule terms are the pool."""

    def __init__(self, spec: DiscoverySpec, backend: SearchBackend,
                 progress: Callable[[ProgressEvent], None] | None = None,
                 checkpoint_dir: Path | str | None = None, should_stop: Callable[[], bool] | None = None):
        methods = (*backend.methods, "none") if hasattr(backend, "fit_stage") else backend.methods
        if spec.search.method not in methods:
            raise ValueError(f"search.method {spec.search.method!r} is not available for the {spec.family} family; "
                             f"available: {', '.join(backend.methods)}")
        super().__init__(spec, progress, checkpoint_dir, should_stop)
        self.backend = backend
        self.plan: SearchPlan = backend.plan(spec) if hasattr(backend, "plan") else SearchPlan()
        if self.plan.budget is not None:
            self.budget = self.planned = self.plan.budget
        self.pool = list(spec.rule.terms or [])
        self.refined: FrontPoint | None = None   # the selected point before its final refit (plan.final_refit)
        self._norms: dict[str, float] | None = None
        self._screener: Any = None
        self._screener_synced = False      # whether the screener's streams continue the replayed screens'

    # ------------------------------------------------------------------ building blocks
    def _subspec(self, terms: list[str], theta: dict[str, float], episodes: int, **meta: Any) -> DiscoverySpec:
        return self.backend.subspec(self.spec, terms, theta, episodes, **meta)

    def fit(self, terms: list[str], theta: dict[str, float], episodes: int, label: str, role: str = "fit",
            **meta: Any) -> Stage:
        """Meta-train θ of `terms` (warm start `theta`) for `episodes` fresh episodes (or the family's own fit,
        ``fit_stage``, for its `role`)."""
        done = self._replay()
        if done is not None:
            return done
        if hasattr(self.backend, "fit_stage"):
            return self._own_fit(terms, theta, label, role)
        spec = self._subspec(terms, theta, episodes, **meta)
        trainer = self.backend.trainer(spec, stream=self.cursor + 1)
        offset, index = self.used, self.cursor
        folder = self._stage_folder(index)
        within = trainer.resume(folder)            # the episodes an interrupted attempt did in this stage
        self._begin(label, within or 0)

        total = self.planned = max(self.planned, offset + episodes)  # the job's episode of the job's total

        def report(event: ProgressEvent) -> None:
            event = event.model_copy(update={"episode": offset + event.episode, "total": total, "phase": label})
            if self.progress is not None:
                self.progress(event)

        self.stopped = trainer.run(report, folder, self.should_stop, resume=False)
        history = [{**h, "episode": offset + h["episode"], "total": total, "phase": label}
                   for h in trainer.history]
        self.history.extend(history)
        stage = Stage(kind="fit", label=label, terms=terms, theta=trainer.theta_dict(), episodes=trainer.episode,
                      history=history)
        return stage if self.stopped else self._record(stage)

    def _poll(self) -> bool:
        """Whether the job asked to stop (then the search stops after the stage in progress)."""
        self.stopped = self.stopped or bool(self.should_stop and self.should_stop())
        return self.stopped

    def _reporter(self, offset: int) -> Callable[[ProgressEvent], None]:
        """Forwards a stage's ProgressEvents (episodes counted from the stage's start) as the job's."""
        def report(event: ProgressEvent) -> None:
            if self.progress is not None:
                self.progress(event.model_copy(update={"episode": offset + event.episode,
                                                       "total": max(self.planned, offset + event.episode)}))
        return report

    def _stage(self, kind: str, label: str, terms: list[str], offset: int, out: FitOutcome) -> Stage:
        history = [{**h, "episode": offset + h["episode"], "total": max(self.planned, offset + h["episode"])}
                   for h in out.history]
        return Stage(kind=kind, label=label, terms=terms, theta=out.theta, episodes=out.episodes, loss=out.loss,
                     history=history)

    def _own_fit(self, terms: list[str], theta: dict[str, float], label: str, role: str) -> Stage:
        """A fit by the family's own optimizer (``fit_stage``); a stop leaves it unrecorded."""
        if self._poll():
            return Stage(kind=role, label=label, terms=terms, theta={t: theta.get(t, 0.0) for t in terms},
                         episodes=0)
        self._begin(label)
        offset = self.used
        out = self.backend.fit_stage(self.spec, terms, theta, role, label, self._reporter(offset), self._poll)
        stage = self._stage("trial" if role == "trial" else "fit", label, terms, offset, out)
        self.history.extend(stage.history)
        return stage if self.stopped else self._record(stage)

    def trials(self, support: list[str], theta: dict[str, float], candidates: list[str], label: str
               ) -> list[Stage]:
        """Trial fits of support + each candidate (candidate from 0): at once by ``fit_trials`` when the family has
        it (recorded as one stage per trial, the episodes on the first), else one after the other."""
        lockstep = getattr(self.backend, "fit_trials", None)
        if lockstep is None or self.cursor < len(self.stages):
            out = []
            for c in candidates:
                out.append(self.fit([*support, c], theta, 0, f"{label} (+{c})", role="trial"))
                if self.stopped:
                    break
            return out
        if self._poll():
            return []
        self._begin(label)
        offset = self.used
        outs = lockstep(self.spec, support, theta, candidates, label, self._reporter(offset), self._poll)
        stages = [self._stage("trial", f"{label} (+{c})", [*support, c], offset, o)
                  for c, o in zip(candidates, outs, strict=True)]
        for st in stages:
            self.history.extend(st.history)
        return stages if self.stopped else [self._record(st) for st in stages]

    def norms(self) -> dict[str, float]:
        """‖F_r‖ of every pool term on fresh networks (the unit of effect; one measurement for the search)."""
        if self._norms is None:
            norms = self.backend.norms(self.screener())
            self._norms = dict(zip(self.pool, norms.tolist(), strict=True))
        return self._norms

    def screener(self) -> Any:
        """A trainer over the whole pool whose meta-gradients screen the candidates."""
        if self._screener is None:
            spec = self._subspec(self.pool, {}, 1, meta_batch=self.spec.search.screen_episodes)
            self._screener = self.backend.trainer(spec, stream=SCREENER_STREAM)
        return self._screener

    def screen(self, theta: dict[str, float], label: str) -> Stage:
        """Rao's score test for every pool term at θ (candidates at θ_r = 0): t_r = ḡ_r / (s_r / √n) with g_r the
        per-episode meta-gradient ∂L/∂θ_r over n fresh episodes. |t_r| ranks how clearly adding term r lowers the
        meta-loss; it is invariant to the term's scale, so terms of different magnitude compare fairly. The
        effect-unit gradient |ḡ_r| ‖F_ref‖/‖F_r‖ is recorded alongside (``effect``)."""
        done = self._replay()
        if done is not None:
            return done
        self._begin(label)
        if hasattr(self.backend, "screen_stage"):
            offset = self.used
            own = self.backend.screen_stage(self.spec, theta, label, self._reporter(offset))
            history = self._stage("screen", label, [], offset, FitOutcome(theta={}, episodes=0,
                                                                           history=own.history)).history
            self.history.extend(history)
            return self._record(Stage(kind="screen", label=label, terms=list(theta), theta=theta,
                                      episodes=own.episodes, scores=own.scores, best_theta=own.best_theta,
                                      history=history))
        trainer = self.screener()
        self._sync_screener()
        norms = self.norms()
        base = self.backend.base_terms[0] if self.backend.base_terms else None
        ref = norms.get(base) if base is not None else None
        ref = ref or float(torch.tensor(list(norms.values())).median())
        with torch.no_grad():
            full = torch.tensor([theta.get(t, 0.0) for t in self.pool], dtype=trainer.dtype)
            trainer.phi.copy_(full / trainer.scale)
        n = self.spec.search.screen_episodes
        t_abs, mean, sem = score_test(*self.backend.screen_gradients(trainer, n))
        norm = torch.tensor([max(norms[t], 1e-30) for t in self.pool], dtype=torch.float64)
        self._save_screener(self.cursor)           # before search.json lists this stage
        as_dict = (lambda v: dict(zip(self.pool, v.tolist(), strict=True)))
        scale = trainer.scale.double().cpu()
        return self._record(Stage(kind="screen", label=label, terms=list(theta), theta=theta, episodes=n,
                                  scores=as_dict(t_abs), effect=as_dict(mean.abs() * ref / norm),
                                  gradient=as_dict(mean * scale), gradient_se=as_dict(sem * scale)))

    def _save_screener(self, index: int) -> None:
        folder = self._stage_folder(index)
        if folder is not None:
            trainer = self.screener()
            save_checkpoint(folder, {"spec": trainer.spec.model_dump(), **self.backend.streams(trainer)},
                            SCREENER_FILE)

    def _sync_screener(self) -> None:
        """Before the first screen this attempt runs: continue the screener's random streams from where the last
        replayed screen left them (its ``screener.pt``; a folder written before that file existed is caught up by
        redrawing the replayed screens' episodes and networks)."""
        if self._screener_synced:
            return
        self._screener_synced = True
        trainer = self.screener()
        replayed = [i for i in range(min(self.cursor, len(self.stages))) if self.stages[i].kind == "screen"]
        if not replayed:
            return
        folder = self._stage_folder(replayed[-1])
        state = load_checkpoint(folder, trainer.spec.model_dump(), SCREENER_FILE) if folder is not None else None
        if state is not None:
            self.backend.set_streams(trainer, state)
            return
        for i in replayed:                          # no state file: redraw what the replayed screens drew
            self.backend.redraw(trainer, self.stages[i].episodes)

    def remaining(self) -> int:
        return max(0, self.budget - self.used)

    # ------------------------------------------------------------------ the searches
    def start(self) -> list[str]:
        """The first support: the family's base term when the pool has it, else the best-screened term at θ = 0."""
        base = [t for t in self.backend.base_terms if t in self.pool][:1]
        if base:
            return base
        scores = self.screen({}, "screen from 0").scores or {}
        return [max(scores, key=scores.get)]

    def _first_theta(self, support: list[str]) -> dict[str, float]:
        """θ of the first support: the spec's θ0, or a gradient-free screening's best lone θ."""
        init = self.spec.rule.initial_theta()
        screened = next((s.best_theta for s in self.stages[:self.cursor] if s.kind == "screen"), None) or {}
        return {t: screened.get(t, init.get(t, 0.0)) for t in support}

    def forward(self) -> list[Stage]:
        """Greedy forward selection: screen, add the best candidate (or the best of ``plan.trials`` trial fits),
        refit; up to max_terms terms; then, when planned, backward elimination."""
        plan = self.plan
        k_max = min(self.spec.search.max_terms, len(self.pool))
        support: list[str] = [] if plan.first_by_trials else self.start()
        n_screen = self.spec.search.screen_episodes
        per_fit = max(1, (self.remaining() - (k_max - 1) * n_screen) // k_max)
        self.planned = max(self.budget, self.used + k_max * per_fit + (k_max - 1) * n_screen)
        fits = [] if not support else [self.fit(support, self._first_theta(support), per_fit,
                                                f"fit {len(support)} terms")]
        while len(support) < k_max and not self.stopped:
            theta = fits[-1].theta if fits else {}
            label = f"screen for term {len(support) + 1}"
            done = None if plan.rescreen else next((s for s in self.stages[:self.cursor] if s.kind == "screen"), None)
            scores = (done or self.screen(theta, label)).scores or {}
            candidates = {t: s for t, s in scores.items() if t not in support and math.isfinite(s)}
            if not candidates:
                break
            label = f"fit {len(support) + 1} terms"
            if plan.trials > 1 and len(candidates) > 1:
                ranked = sorted(candidates, key=candidates.get, reverse=True)[:plan.trials]
                tried = self.trials(support, theta, ranked, f"trial {len(support) + 1} terms")
                if self.stopped or not tried:
                    break
                best = min(tried, key=training_loss)
                support = best.terms
                fits.append(self.fit(support, best.theta, per_fit, label) if plan.refit_trial else best)
            else:
                support = [*support, max(candidates, key=candidates.get)]
                fits.append(self.fit(support, theta, per_fit, label))
        if plan.eliminate and fits and not self.stopped:
            fits += self.eliminate(max(fits, key=lambda f: len(f.terms)))
        return fits

    def eliminate(self, fit: Stage) -> list[Stage]:
        """Backward elimination from ``fit``'s support down to one term: refit with each term removed in turn (warm
        start) and keep the removal of the lowest training loss; every support on the way is returned."""
        fits, current = [], fit
        while len(current.terms) > 1 and not self.stopped:
            tried = []
            for drop in current.terms:
                rest = [t for t in current.terms if t != drop]
                tried.append(self.fit(rest, {t: current.theta[t] for t in rest}, 0,
                                      f"eliminate {drop}: {len(rest)} terms"))
                if self.stopped:
                    return fits
            current = min(tried, key=training_loss)
            fits.extend(tried)
        return fits

    def none(self) -> list[Stage]:
        """Fit the given terms (search.method none, families with their own fit)."""
        return [self.fit(self.pool, self.spec.rule.initial_theta(), self.budget, f"fit {len(self.pool)} terms",
                         role="fixed")]

    def backward(self) -> list[Stage]:
        """Dense fit of the pool, then drop the smallest-effect term and refit, down to one term."""
        init = self.spec.rule.initial_theta()
        R = len(self.pool)
        dense = self.fit(self.pool, init, max(1, self.remaining() * 2 // 5), f"fit {R} terms")
        fits = [dense]
        per_fit = max(1, self.remaining() // max(1, R - 1))
        s = dict(zip(self.pool, self.screener().scale.tolist(), strict=True))
        keep_base = set(self.backend.base_terms)
        while len(fits[-1].terms) > 1 and not self.stopped:
            cur = fits[-1]
            effect = {t: abs(cur.theta[t]) / max(s[t], 1e-30) for t in cur.terms if t not in keep_base} or \
                {t: abs(cur.theta[t]) for t in cur.terms}
            keep = [t for t in cur.terms if t != min(effect, key=effect.get)]
            fits.append(self.fit(keep, cur.theta, per_fit, f"fit {len(keep)} terms"))
        return fits

    def path(self) -> list[Stage]:
        """The lasso path from the sparse end (glmnet's order) with a KKT working set: fit the first support,
        screen it, λ_max = max_r |ḡ_r| − z·se_r (∂L/∂φ_r; no term enters above it), then for λ_k = λ_max·2^{−k/2} fit
        only the working set — the support, the nonzero terms and every zero term whose KKT condition |ḡ_r| ≤ λ_k
        is violated significantly at the previous solution, |ḡ_r| − z·se_r > λ_k (screened over n episodes,
        z = KKT_Z) — with proximal L1 (the first support unpenalized) and warm starts, screening again at each λ's
        solution; each support the path visits is refit without L1 (debiasing). A term thus enters when its
        averaged gradient clearly exceeds λ, not when one noisy screening says so."""
        init = self.spec.rule.initial_theta()
        n_lambda = self.spec.search.n_lambda
        support = self.start()
        first = self.fit(support, {t: init.get(t, 0.0) for t in support}, max(1, self.remaining() // 5),
                         f"fit {len(support)} terms")
        screen = self.screen(first.theta, "screen at λ_max")
        lam_max = lambda_max(screen, support)
        n_screen = self.spec.search.screen_episodes
        per_lambda = max(1, (self.remaining() * 3 // 5 - (n_lambda - 1) * n_screen) // n_lambda)
        cur, supports, fits = first, [], [first]
        for k in range(1, n_lambda + 1):
            if self.stopped:
                break
            lam = lam_max * LAMBDA_RATIO ** k
            active = [t for t in self.pool if t in support or cur.theta.get(t, 0.0) != 0.0
                      or kkt_violation(screen, t) > lam]
            cur = self.fit(active, cur.theta, per_lambda, f"path λ={lam:.3g}", l1=lam, l1_mode="proximal",
                           l1_exempt=[t for t in support if t in self.pool])
            nonzero = [t for t in self.pool if cur.theta.get(t, 0.0) != 0.0]
            if nonzero and nonzero not in [f.terms for f in supports]:
                supports.append(cur.model_copy(update={"terms": nonzero,
                                                       "theta": {t: cur.theta[t] for t in nonzero}}))
            if k < n_lambda and not self.stopped:
                screen = self.screen({t: cur.theta[t] for t in nonzero}, f"screen at λ={lam:.3g}")
        per_refit = max(1, self.remaining() // max(1, len(supports)))
        for sup in supports:
            if self.stopped:
                break
            fits.append(self.fit(sup.terms, sup.theta, per_refit, f"refit {len(sup.terms)} terms"))
        return fits

    # ------------------------------------------------------------------ scoring
    def score(self, fits: list[Stage]) -> list[FrontPoint]:
        """Every distinct support's refit θ scored on the same held-out episodes; the selected one marked."""
        by_support: dict[tuple[str, ...], Stage] = {}
        for f in fits:                  # the latest fit of a support wins, or the lower training loss when known
            old = by_support.get(key := tuple(sorted(f.terms)))
            if old is None or f.loss is None or old.loss is None or f.loss < old.loss:
                by_support[key] = f
        ordered = sorted(by_support.values(), key=lambda f: len(f.terms))
        front = self._points(ordered, "fit")
        if front:
            front[select(front)].selected = True
        return front

    def _points(self, fits: list[Stage], role: str) -> list[FrontPoint]:
        """The front points of `fits`, scored on the held-out episodes (the family's ``front_points`` if any)."""
        if hasattr(self.backend, "front_points"):
            return self.backend.front_points(self.spec, fits, role)
        episodes = self.spec.search.front_eval_episodes or self.spec.meta.eval_episodes
        front = []
        for f in fits:
            trainer = self.backend.trainer(self._subspec(f.terms, f.theta, 1))
            acc, ci, n = self.backend.evaluate(trainer, episodes) if episodes else (None, None, 0)
            rule = self.backend.rule(f.terms, f.theta, self.spec.name)
            front.append(FrontPoint(terms=f.terms, theta=f.theta, rule=rule, n_terms=len(f.terms),
                                    complexity=self.backend.complexity(f.terms), heldout_accuracy=acc,
                                    heldout_ci95=ci, heldout_episodes=n, stage=f.label))
        return front

    def final_refit(self, front: list[FrontPoint], fits: list[Stage]) -> list[Stage]:
        """The selected support refit alone (the family's role "final"); its point replaces the selected one."""
        i = next((i for i, p in enumerate(front) if p.selected), None)
        if i is None:
            return fits
        chosen = front[i]
        fit = self.fit(chosen.terms, chosen.theta, self.budget, f"final refit {len(chosen.terms)} terms",
                       role="final")
        if self.stopped:
            return fits
        point = self._points([fit], "final")[0]
        point.selected = True
        self.refined, front[i] = chosen, point
        return [*fits, fit]

    def run(self) -> tuple[list[FrontPoint], list[Stage]]:
        fits = getattr(self, self.spec.search.method)()
        if not self.plan.final_refit or self.stopped:
            self._finish_replay()      # every stage was replayed: only the scoring is left
            return ([] if self.stopped else self.score(fits)), fits
        front = self.score(fits)
        fits = self.final_refit(front, fits)
        self._finish_replay()
        return ([] if self.stopped else front), fits


def search_result(spec: DiscoverySpec, search: FamilySearch, front: list[FrontPoint], fits: list[Stage],
                  t0: float) -> DiscoveryResult:
    """The DiscoveryResult of a finished (or stopped) search: the selected rule with the whole front."""
    chosen = next((p for p in front if p.selected), None)
    last = fits[-1] if fits else None
    theta = chosen.theta if chosen else (last.theta if last else {})
    terms = chosen.terms if chosen else (last.terms if last else [])
    rule = chosen.rule if chosen else search.backend.rule(terms, theta, spec.name)   # no fit yet: the zero rule
    screens = [s for s in search.stages if s.kind == "screen"]
    return DiscoveryResult(
        rule=rule, theta=theta, history=search.history, theta_history=[h["theta"] for h in search.history],
        heldout_accuracy=chosen.heldout_accuracy if chosen else None,
        heldout_ci95=chosen.heldout_ci95 if chosen else None,
        heldout_episodes=chosen.heldout_episodes if chosen else 0,
        diverged_episodes=sum(h.get("dropped_episodes", 0) for h in search.history),
        skipped_steps=sum(1 for h in search.history if h.get("skipped")), stopped=search.stopped,
        resumed_from_episode=search.resumed_from, wall_time_s=time.perf_counter() - t0,
        device=search.backend.device(spec),
        spec=spec.model_dump(), front=front,
        search={"method": spec.search.method, "pool": search.pool, "episodes": search.used,
                **({"resumed": search.resumed} if search.resumed is not None else {}),
                "stages": [{"label": s.label, "kind": s.kind, "terms": s.terms, "episodes": s.episodes,
                            **({"loss": s.loss} if s.loss is not None else {})} for s in search.stages],
                "screening": [{"label": s.label, "scores": s.scores, "effect": s.effect} for s in screens],
                **(search.backend.result_extra(spec, search, front) if hasattr(search.backend, "result_extra")
                   else {})})


def run_search(spec: DiscoverySpec, backend: SearchBackend, progress: Callable[[ProgressEvent], None] | None = None,
               checkpoint_dir: Path | str | None = None,
               should_stop: Callable[[], bool] | None = None) -> DiscoveryResult:
    """Run spec.search over spec.rule.terms with a family's backend; the selected rule with the whole front."""
    t0 = time.perf_counter()
    search = FamilySearch(spec, backend, progress, checkpoint_dir, should_stop)
    front, fits = search.run()
    return search_result(spec, search, front, fits, t0)
