"""Open discovery over a task distribution (docs/transfer.md): forward selection meta-trained on the training
cells, the front scored on every cell and the support chosen on the selection cells only.

* Fits: θ of a support meta-trained over the training cells (discovery.transfer.multitask.MultiTaskTrainer);
  screens: Rao's score test t_r = ḡ_r / (s_r/√n) of every pool term at θ_r = 0 over n fresh episodes drawn
  across the training cells (as discovery.search.open_search, which works on one cell); the budget split is that
  search's: per fit (E − (k−1)·n) / k episodes for k supports.
* Per-layer option (``transfer.coefficients`` = ``profile`` or ``per-layer``): every support found also gets a
  refit with layered coefficients (warm start: its shared θ, zero slopes), on the same per-fit budget; both go on
  the front, whose complexity counts parameters — structural complexity + (free coefficients − terms) — so the
  layered variant is selected only when the shared one is outside the best's CI.
* Scoring: every point on every cell (train, select, test) on E held-out episodes of the run's seed (paired across
  points); its front accuracy is the per-episode mean over the selection cells (the training cells when there
  are none) with its 95 % t-interval. A point whose θ diverges on a cell *fails* there (``cells[i].failed``,
  listed in ``failed``); one that fails on a training or selection cell cannot be selected. Test cells are only
  reported.
* Trials (``transfer.trials`` = k > 1): each step fits the screen's k largest |t_r| candidates (warm, per-fit
  budget each) and the best on the selection cells joins; every trial stays on the front.
* Refit (``transfer.refit``): the selected support alone, with the full budget E, warm-started from its θ and
  from scratch (θ0 = 1e-3 on F0, 0 elsewhere), ``transfer.refit_restarts`` times each on distinct episode
  streams; the best on the selection cells replaces it.
* A cell with ``stream`` k > 0 is scored on an independent draw of held-out episodes (meta seed + k·10⁶), so a
  cell can select on one draw and be reported on another.

Resume: the generic search's stage log (discovery.search.stages.StageLog): finished stages are recorded in
``checkpoint_dir/transfer_search.json`` (for this very spec) and replayed; a fit in progress resumes from its trainer
checkpoint (``stage_<i>/``); the attempt's first stage that runs announces where it resumed; the screener first
redraws the replayed screens' cells, episodes and networks, so the screens after a restart draw what an
uninterrupted run draws. Screens use the generic score test (discovery.search.stages.score_test).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from discovery.analysis.stats import mean_halfwidth
from discovery.feedforward.trainer import learned_rule, resolve_device
from discovery.results import DiscoveryResult, FrontPoint, ProgressEvent
from discovery.search.open_search import complexity, select
from discovery.search.stages import Stage, StageLog, score_test
from discovery.spec import DiscoverySpec
from discovery.transfer.layered import SLOPE, layered_hash, layered_part, n_params, shared_theta
from discovery.transfer.multitask import MultiTaskTrainer, fixed_cell_trainer
from discovery.transfer.scoring import CellScore, heldout_outcome
from discovery.transfer.spec import Cell

STATE_FILE = "transfer_search.json"


class FitStage(Stage):
    """A finished fit or screen (what the state file records): the generic stage with the coefficient layout."""

    coefficients: str = "shared"


class TransferPoint(BaseModel):
    """One point of the front with its per-cell scores and where it failed."""

    terms: list[str]
    coefficients: str
    n_params: int
    stage: str
    selection_accuracy: float | None
    selection_ci95: float | None
    cells: list[CellScore]
    failed: list[str]

    @property
    def selectable(self) -> bool:
        """Fails on no training or selection cell (failures on test cells are only reported)."""
        return not any(c.failed and c.role in ("train", "select") for c in self.cells)


class TransferSearch(StageLog):
    """Forward selection over ``spec.transfer``'s training cells (see the module docstring)."""

    state_file = STATE_FILE
    stage_model = FitStage

    def __init__(self, spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
                 checkpoint_dir: Path | str | None = None, should_stop: Callable[[], bool] | None = None):
        if spec.transfer is None:
            raise ValueError("a transfer search needs spec.transfer")
        super().__init__(spec, progress, checkpoint_dir, should_stop)
        self.transfer = spec.transfer
        self.pool = list(spec.rule.terms or [])
        self._screener: MultiTaskTrainer | None = None
        self._scored: dict[str, tuple[dict[str, float], TransferPoint]] = {}

    # ------------------------------------------------------------------ building blocks
    def _subspec(self, terms: list[str], theta: dict[str, float], episodes: int, **meta: Any) -> DiscoverySpec:
        data = self.spec.model_dump()
        data["rule"] = {"terms": terms, "theta_init": {t: theta.get(t, 0.0) for t in terms}}
        data["meta"].update({"episodes": max(1, episodes), **meta})
        data["search"], data["sweep"] = {"method": "none"}, {}
        return DiscoverySpec.model_validate(data)

    def fit(self, terms: list[str], theta: dict[str, float], episodes: int, label: str,
            coefficients: str = "shared") -> FitStage:
        """Meta-train the support's θ (warm start ``theta``; layered keys for a profile / per-layer layout) over
        the training cells for ``episodes`` one-step meta-batches."""
        done = self._replay()
        if done is not None:
            return done
        spec = self._subspec(terms, shared_theta(terms, theta), episodes)
        layered = layered_part(terms, theta)
        trainer = MultiTaskTrainer(spec, stream=self.cursor + 1, coefficients=coefficients, theta_init=layered)
        folder = self._stage_folder(self.cursor)
        offset = self.used
        self._begin(label)

        def report(event: ProgressEvent) -> None:
            if self.progress is not None:
                self.progress(event.model_copy(update={"episode": offset + event.episode, "phase": label,
                                                       "total": max(self.spec.meta.episodes, offset + episodes)}))

        self.stopped = trainer.run(report, folder, self.should_stop)
        history = [{**h, "episode": offset + h["episode"], "phase": label} for h in trainer.history]
        self.history.extend(history)
        stage = FitStage(kind="fit", label=label, terms=terms, coefficients=coefficients,
                         theta=trainer.theta_dict(), episodes=trainer.episode, history=history)
        return stage if self.stopped else self._record(stage)

    def screen(self, theta: dict[str, float], label: str) -> FitStage:
        """Rao's score test of every pool term at θ over n episodes drawn across the training cells."""
        done = self._replay()
        if done is not None:
            return done
        self._begin(label)
        if self._screener is None:
            spec = self._subspec(self.pool, {}, 1, meta_batch=self.spec.search.screen_episodes)
            self._screener = MultiTaskTrainer(spec, stream=10_000, coefficients="shared")
            for replayed in (s for s in self.stages[:self.cursor] if s.kind == "screen"):
                self._redraw(self._screener, replayed.episodes)
        trainer = self._screener
        with torch.no_grad():
            full = torch.tensor([theta.get(t, 0.0) for t in self.pool], dtype=trainer.lead.dtype)
            trainer.lead.phi.copy_(full / trainer.lead.scale)
        n = self.spec.search.screen_episodes
        t_abs, _, _ = score_test(*trainer.episode_gradients(n))
        return self._record(FitStage(kind="screen", label=label, terms=list(theta), theta=theta, episodes=n,
                                     scores=dict(zip(self.pool, t_abs.tolist(), strict=True))))

    @staticmethod
    def _redraw(trainer: MultiTaskTrainer, n: int) -> None:
        """Draw what a screen of n episodes draws (cells, episodes, networks) without computing it: a resumed
        search's screener continues from where the replayed screens left its streams."""
        for child, k in zip(trainer.children, trainer.screen_counts(n)):
            if k:
                child.train_sampler.sample(k, device=child.device, dtype=child.dtype)
                child._weights(k)

    # ------------------------------------------------------------------ the search
    def forward(self) -> list[FitStage]:
        """Greedy forward selection over the pool (F0 first; ``trials`` candidates fitted per step), then the
        layered refits of the path's supports when asked."""
        k_max = min(self.spec.search.max_terms, len(self.pool))
        n_screen = self.spec.search.screen_episodes
        per_fit = max(1, (self.spec.meta.episodes - (k_max - 1) * n_screen) // k_max)
        init = self.spec.rule.initial_theta()
        support = ["F0"] if "F0" in self.pool else [self.pool[0]]
        path = [self.fit(support, {t: init.get(t, 0.0) for t in support}, per_fit, f"fit {len(support)} terms")]
        fits = list(path)
        while len(support) < k_max and not self.stopped:
            scores = self.screen(path[-1].theta, f"screen for term {len(support) + 1}").scores or {}
            candidates = {t: s for t, s in scores.items() if t not in support and math.isfinite(s)}
            if not candidates:
                break
            tried = self.trial(support, path[-1].theta, candidates, per_fit)
            fits.extend(tried)
            if self.stopped:
                break
            path.append(max(tried, key=self.selection_score) if len(tried) > 1 else tried[0])
            support = path[-1].terms
        if self.transfer.coefficients != "shared":
            for f in path:
                if self.stopped:
                    break
                fits.append(self.fit(f.terms, f.theta, per_fit, f"{self.transfer.coefficients} {len(f.terms)} terms",
                                     coefficients=self.transfer.coefficients))
        return fits

    def trial(self, support: list[str], theta: dict[str, float], candidates: dict[str, float],
              per_fit: int) -> list[FitStage]:
        """The support plus each of the ``trials`` largest-|t| candidates, fitted warm from ``theta``."""
        ranked = sorted(candidates, key=candidates.get, reverse=True)[:self.transfer.trials]
        label = f"fit {len(support) + 1} terms"
        tried: list[FitStage] = []
        for c in ranked:
            tried.append(self.fit([*support, c], theta, per_fit, label + (f" + {c}" if len(ranked) > 1 else "")))
            if self.stopped:
                break
        return tried

    def refit(self, chosen: FitStage, fits: list[FitStage]) -> list[FitStage]:
        """The selected support alone with the full budget, warm-started and from scratch, ``refit_restarts``
        times each (every fit draws its own episode stream); when a shared point was selected in a layered
        search, also its layered fit warm-started with the full budget (its short fit is no fair comparison)."""
        init = {t: v for t, v in self.spec.rule.initial_theta().items() if t in chosen.terms}
        budget, mode, k = self.spec.meta.episodes, chosen.coefficients, self.transfer.refit_restarts
        n = len(chosen.terms)
        starts = [(f"refit warm {n} terms", chosen.theta, mode), (f"refit scratch {n} terms", init, mode)]
        layout = self.transfer.coefficients
        layered = [f for f in fits if f.coefficients == layout and sorted(f.terms) == sorted(chosen.terms)]
        if mode == "shared" != layout and layered:
            starts.append((f"refit warm {n} terms {layout}", layered[-1].theta, layout))
        out: list[FitStage] = []
        for r in range(k):
            for label, theta, coefficients in starts:
                out.append(self.fit(chosen.terms, theta, budget, label + (f" #{r + 1}" if r else ""),
                                    coefficients))
                if self.stopped:
                    return out
        return out

    # ------------------------------------------------------------------ scoring
    def selection_score(self, f: FitStage) -> float:
        """A fit's selection-cell accuracy (−1 when it fails on a training or selection cell): how trials compete."""
        p = self.score_fit(f)
        return p.selection_accuracy if p.selectable and p.selection_accuracy is not None else -1.0

    def score_fit(self, f: FitStage) -> TransferPoint:
        """The fit's θ on every cell (held-out episodes of the run's seed) and its selection-cell score (cached per
        stage label: trials are scored once, on the path and on the front)."""
        if f.label in self._scored and self._scored[f.label][0] == f.theta:
            return self._scored[f.label][1]
        point = self._score_fit(f)
        self._scored[f.label] = (f.theta, point)
        return point

    def _score_fit(self, f: FitStage) -> TransferPoint:
        episodes = self.spec.search.front_eval_episodes or self.spec.meta.eval_episodes
        scores = []
        for cell in self.transfer.cells:
            scores.append(self.score_on(cell, f, episodes))
        chosen = [s for s in scores if s.role == "select"] or [s for s in scores if s.role == "train"]
        per_episode = [sum(vals) / len(vals) for vals in zip(*(s.per_episode for s in chosen))]
        acc, ci = mean_halfwidth(per_episode) if per_episode else (None, None)
        depth = self.spec.network.depth
        return TransferPoint(terms=f.terms, coefficients=f.coefficients, stage=f.label,
                             n_params=n_params(len(f.terms), f.coefficients, depth),
                             selection_accuracy=acc, selection_ci95=ci, cells=scores,
                             failed=[s.cell for s in scores if s.failed])

    def score_on(self, cell: Cell, f: FitStage, episodes: int) -> CellScore:
        """One fit's θ on one cell."""
        trainer = fixed_cell_trainer(self.spec, cell, f.terms, f.theta, self.spec.meta.seed, episodes=1)
        values, diverged = heldout_outcome(trainer, episodes)
        mean, half = mean_halfwidth(values)
        return CellScore(cell=cell.label, role=cell.role, score=mean, ci95=[mean - half, mean + half],
                         per_episode=values.tolist(), diverged=diverged, failed=diverged > 0, theta=f.theta)

    def front(self, fits: list[FitStage]) -> tuple[list[FrontPoint], list[TransferPoint]]:
        """Distinct (support, layout) points, scored; the simplest within the best's CI among those that fail on
        no training or selection cell is selected."""
        latest: dict[tuple[tuple[str, ...], str], FitStage] = {}
        for f in fits:
            if f.kind == "fit":
                latest[(tuple(sorted(f.terms)), f.coefficients)] = f
        ordered = sorted(latest.values(), key=lambda f: (len(f.terms), f.coefficients != "shared"))
        points = [self.score_fit(f) for f in ordered]
        front = [self.front_point(f, p) for f, p in zip(ordered, points)]
        eligible = [i for i, p in enumerate(points) if p.selectable]
        if eligible:
            pick = eligible[select([front[i] for i in eligible])]
            front[pick].selected = True
        return front, points

    def front_point(self, f: FitStage, p: TransferPoint) -> FrontPoint:
        return FrontPoint(terms=f.terms, theta=f.theta, rule=rule_dict(f.terms, f.theta),
                          n_terms=len(f.terms), complexity=complexity(f.terms) + p.n_params - len(f.terms),
                          heldout_accuracy=p.selection_accuracy, heldout_ci95=p.selection_ci95,
                          heldout_episodes=len(p.cells[0].per_episode) if p.cells else 0, stage=f.label)

    def run(self) -> tuple[list[FrontPoint], list[TransferPoint], list[FitStage]]:
        fits = self.forward()
        if self.stopped:
            return [], [], fits
        front, points = self.front(fits)
        if self.transfer.refit and not self.stopped and any(p.selected for p in front):
            i = next(i for i, p in enumerate(front) if p.selected)
            chosen = next(f for f in fits if f.kind == "fit" and f.label == front[i].stage)
            refits = self.refit(chosen, fits)
            fits = [*fits, *refits]
            if not self.stopped:
                front, points = self.refit_front(front, points, refits, i)
        return front, points, fits

    def refit_front(self, front: list[FrontPoint], points: list[TransferPoint], refits: list[FitStage],
                    chosen: int) -> tuple[list[FrontPoint], list[TransferPoint]]:
        """Score the refits (all stay on the front); the selection goes to the front's rule applied to the selected
        point and its refits that fail nowhere it matters: the simplest within the best's CI, so among one layout
        the most accurate, and a layered refit only when the shared candidates lie outside its CI."""
        first = len(front)
        for f in refits:
            p = self.score_fit(f)
            front.append(self.front_point(f, p))
            points.append(p)
        candidates = [chosen] + [i for i in range(first, len(front)) if points[i].selectable]
        pick = candidates[select([front[i] for i in candidates])]
        front[chosen].selected = False
        front[pick].selected = True
        return front, points


def rule_dict(terms: list[str], theta: dict[str, float]) -> dict[str, Any]:
    """The result's rule of a fit: the pruned shared projection's fields, its θ as ``coefficients_raw`` and a hash
    that covers layered θ (discovery.transfer.layered.layered_hash)."""
    rule = learned_rule(terms, shared_theta(terms, theta))
    return {**rule.to_dict(), "hash": layered_hash(rule, theta), "coefficients_raw": theta}


def discover_transfer(spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
                      checkpoint_dir: Path | str | None = None,
                      should_stop: Callable[[], bool] | None = None) -> DiscoveryResult:
    """Run the transfer search for ``spec`` (search.method must be forward) and return the selected rule, the
    front and, in ``search.transfer``, every point's per-cell scores."""
    if spec.search.method not in ("forward", "none"):
        raise ValueError(f"a task distribution is searched by forward selection, not {spec.search.method!r}")
    t0 = time.perf_counter()
    search = TransferSearch(spec, progress, checkpoint_dir, should_stop)
    if spec.search.method == "none":           # fit the given terms over the distribution, score on every cell
        init = spec.rule.initial_theta()
        fits = [search.fit(list(spec.rule.terms or []), init, spec.meta.episodes, "fit",
                           spec.transfer.coefficients if spec.transfer else "shared")]
        front, points = ([], []) if search.stopped else search.front(fits)
    else:
        front, points, fits = search.run()
    chosen = next((p for p in front if p.selected), None)
    last = next((f for f in reversed(fits) if f.kind == "fit"), None)
    theta = chosen.theta if chosen else (last.theta if last else {})
    terms = chosen.terms if chosen else (last.terms if last else [])
    rule = chosen.rule if chosen else rule_dict(terms, theta)
    return DiscoveryResult(
        rule=rule, theta=theta, history=search.history, theta_history=[h["theta"] for h in search.history],
        heldout_accuracy=chosen.heldout_accuracy if chosen else None,
        heldout_ci95=chosen.heldout_ci95 if chosen else None,
        heldout_episodes=chosen.heldout_episodes if chosen else 0,
        diverged_episodes=sum(h.get("dropped_episodes", 0) for h in search.history),
        skipped_steps=sum(1 for h in search.history if h.get("skipped")), stopped=search.stopped,
        resumed_from_episode=search.resumed_from, wall_time_s=time.perf_counter() - t0,
        device=str(resolve_device(spec.resources.device)), spec=spec.model_dump(), front=front,
        search={"method": "forward", "pool": search.pool, "episodes": search.used,
                **({"resumed": search.resumed} if search.resumed is not None else {}),
                "transfer": {**(spec.transfer.model_dump() if spec.transfer else {}),
                             "points": [p.model_dump() for p in points]},
                "stages": [{"label": s.label, "kind": s.kind, "terms": s.terms, "coefficients": s.coefficients,
                            "episodes": s.episodes} for s in search.stages],
                "screening": [{"label": s.label, "scores": s.scores} for s in search.stages if s.kind == "screen"]})


__all__ = ["SLOPE", "FitStage", "TransferPoint", "TransferSearch", "discover_transfer"]
