"""Open discovery: search which terms of a pool the rule needs, then return a complexity × accuracy front.

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

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from discovery.feedforward.checkpoint import load_checkpoint, save_checkpoint
from discovery.feedforward.trainer import MetaTrainer, learned_rule, resolve_device, term_norms
from discovery.results import DiscoveryResult, FrontPoint, ProgressEvent
from discovery.spec import DiscoverySpec
from rules.terms import term

STATE_FILE = "search.json"
SCREENER_FILE = "screener.pt"   # the screener's sampler and generator state after a screen stage (in stage_<i>/)
KKT_Z = 2.0           # a zero term joins the path's working set when |ḡ_r| − KKT_Z·se_r > λ (a significant violation)
LAMBDA_RATIO = 2 ** -0.5   # λ_k = λ_max · LAMBDA_RATIO^k


class Stage(BaseModel):
    """A finished stage of the search (what `search.json` records)."""

    kind: str                        # "fit", "screen"
    label: str
    terms: list[str]
    theta: dict[str, float]
    episodes: int
    scores: dict[str, float] | None = None           # screening: |t| of the score test per pool term
    effect: dict[str, float] | None = None           # screening: |∂L/∂θ_r| in units of effect
    gradient: dict[str, float] | None = None         # screening: mean ∂L/∂φ_r (φ = θ/s, the optimizer's variable)
    gradient_se: dict[str, float] | None = None      # screening: its standard error s_r/√n
    history: list[dict] = []


def complexity(terms: list[str]) -> int:
    """Σ over the terms' monomials of their primitive factors (e xᵀ = 2, y (yᵀW) = 4, (1ᵀy) e xᵀ = 4)."""
    return sum(sum(len(seg) for seg in mono.spine) + sum(len(s) for s in mono.scalars)
               for t in terms for mono in term(t).poly.terms)


def select(front: list[FrontPoint]) -> int:
    """Index of the simplest point whose accuracy is within the 95 % CI of the best (ties: higher accuracy)."""
    scored = [(i, p) for i, p in enumerate(front) if p.heldout_accuracy is not None]
    if not scored:
        return len(front) - 1
    best = max(scored, key=lambda ip: ip[1].heldout_accuracy)[1]
    floor = best.heldout_accuracy - (best.heldout_ci95 or 0.0)
    ok = [(p.n_terms, p.complexity, -p.heldout_accuracy, i) for i, p in scored if p.heldout_accuracy >= floor]
    return min(ok)[3]


class Search:
    """Runs one of the searches of the module docstring for a spec whose rule terms are the pool."""

    def __init__(self, spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
                 checkpoint_dir: Path | str | None = None, should_stop: Callable[[], bool] | None = None):
        self.spec = spec
        self.pool = list(spec.rule.terms or [])
        self.progress = progress
        self.folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.should_stop = should_stop
        self.budget = spec.meta.episodes
        self.used = 0                      # episodes consumed by finished stages
        self.planned = self.budget         # the job's total episodes as planned (screens included)
        self.stages: list[Stage] = self._load_state()
        self.cursor = 0                    # index of the next stage (replayed from search.json when done)
        self.history: list[dict] = []
        self.stopped = False
        self.resumed_from: int | None = None   # the job's episode where this attempt resumed (None: a fresh run)
        self.resumed: dict[str, Any] | None = None   # {stage, label, episode, within_stage} when it resumed
        self._started = False              # whether a stage has run (not replayed) in this attempt
        self._norms: dict[str, float] | None = None
        self._screener: MetaTrainer | None = None
        self._screener_synced = False      # whether the screener's streams continue the replayed screens'

    # ------------------------------------------------------------------ state
    def _load_state(self) -> list[Stage]:
        if self.folder is None or not (self.folder / STATE_FILE).exists():
            return []
        raw = json.loads((self.folder / STATE_FILE).read_text())
        if raw.get("spec") != self.spec.model_dump(mode="json"):
            return []
        return [Stage.model_validate(s) for s in raw["stages"]]

    def _save_state(self) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"spec": self.spec.model_dump(mode="json"),
                                   "stages": [s.model_dump(mode="json") for s in self.stages]}))
        tmp.replace(self.folder / STATE_FILE)

    def _replay(self) -> Stage | None:
        """The recorded result of the next stage, when a previous run finished it."""
        if self.cursor < len(self.stages):
            stage = self.stages[self.cursor]
            self.cursor += 1
            self.used += stage.episodes
            self.history.extend(stage.history)
            return stage
        return None

    def _begin(self, label: str, within: int = 0) -> None:
        """Called when stage `self.cursor` runs (not replayed). The first such stage of an attempt that replayed
        stages or restored a stage checkpoint is where it resumed: the job's episode self.used + `within` (the
        episodes the interrupted stage had already done). Announced by a ProgressEvent."""
        if self._started:
            return
        self._started = True
        if self.cursor == 0 and within == 0:
            return
        self._announce(self.used + within, self.cursor, label, within)

    def _announce(self, episode: int, index: int, label: str | None, within: int) -> None:
        self.resumed_from = episode
        self.resumed = {"stage": index + 1, "label": label, "episode": episode, "within_stage": within}
        phase = (f"resumed stage {index + 1} ({label}) at episode {episode}" if label is not None
                 else f"resumed after stage {index} (all stages done) at episode {episode}")
        if self.progress is not None:
            self.progress(ProgressEvent(episode=episode, total=max(self.planned, episode), meta_loss=None,
                                        meta_accuracy=None, theta={}, phase=phase))

    def _stage_folder(self, index: int) -> Path | None:
        return self.folder / f"stage_{index}" if self.folder is not None else None

    def _record(self, stage: Stage) -> Stage:
        self.stages.append(stage)
        self.cursor += 1
        self.used += stage.episodes
        self._save_state()
        return stage

    # ------------------------------------------------------------------ building blocks
    def _subspec(self, terms: list[str], theta: dict[str, float], episodes: int, **meta: Any) -> DiscoverySpec:
        data = self.spec.model_dump()
        data["rule"] = {"terms": terms, "theta_init": {t: theta.get(t, 0.0) for t in terms}}
        data["meta"].update({"episodes": max(1, episodes), **meta})
        data["search"] = {"method": "none"}
        data["sweep"] = {}
        return DiscoverySpec.model_validate(data)

    def fit(self, terms: list[str], theta: dict[str, float], episodes: int, label: str, **meta: Any) -> Stage:
        """Meta-train θ of `terms` (warm start `theta`) for `episodes` fresh episodes."""
        done = self._replay()
        if done is not None:
            return done
        spec = self._subspec(terms, theta, episodes, **meta)
        trainer = MetaTrainer(spec, stream=self.cursor + 1)
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

    def norms(self) -> dict[str, float]:
        """‖F_r‖ of every pool term on fresh networks (the unit of effect; one measurement for the search)."""
        if self._norms is None:
            trainer = self.screener()
            norms = trainer.norms if trainer.norms is not None else term_norms(trainer)
            self._norms = dict(zip(self.pool, norms.tolist(), strict=True))
        return self._norms

    def screener(self) -> MetaTrainer:
        """A trainer over the whole pool whose meta-gradients screen the candidates."""
        if self._screener is None:
            spec = self._subspec(self.pool, {}, 1, meta_batch=self.spec.search.screen_episodes)
            self._screener = MetaTrainer(spec, stream=10_000)
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
        trainer = self.screener()
        self._sync_screener()
        norms = self.norms()
        ref = norms.get("F0") or float(torch.tensor(list(norms.values())).median())
        with torch.no_grad():
            full = torch.tensor([theta.get(t, 0.0) for t in self.pool], dtype=trainer.dtype)
            trainer.phi.copy_(full / trainer.scale)
        n = self.spec.search.screen_episodes
        ep = trainer.train_sampler.sample(n, device=trainer.device, dtype=trainer.dtype)
        Ws, Bs = trainer._weights(n)
        loss, grad, _, _ = trainer.meta_gradient(ep, Ws, Bs)
        finite = torch.isfinite(loss) & torch.isfinite(grad).all(0)
        g = grad[:, finite].double()
        k = g.shape[1]
        mean = g.mean(1) if k else torch.zeros(len(self.pool), dtype=torch.float64)
        sem = g.std(1) / math.sqrt(k) if k > 1 else torch.full_like(mean, math.inf)
        t_abs = torch.where(sem > 0, mean.abs() / sem, torch.where(mean != 0, math.inf, 0.0))
        norm = torch.tensor([max(norms[t], 1e-30) for t in self.pool], dtype=torch.float64)
        self._save_screener(self.cursor)           # before search.json lists this stage
        as_dict = (lambda v: dict(zip(self.pool, v.tolist(), strict=True)))
        return self._record(Stage(kind="screen", label=label, terms=list(theta), theta=theta, episodes=n,
                                  scores=as_dict(t_abs), effect=as_dict(mean.abs() * ref / norm),
                                  gradient=as_dict(mean * trainer.scale.double()),
                                  gradient_se=as_dict(sem * trainer.scale.double())))

    def _screener_state(self) -> dict[str, Any]:
        trainer = self.screener()
        return {"spec": trainer.spec.model_dump(), "train_sampler": trainer.train_sampler.get_state(),
                "gen": trainer.gen.get_state()}

    def _save_screener(self, index: int) -> None:
        folder = self._stage_folder(index)
        if folder is not None:
            save_checkpoint(folder, self._screener_state(), SCREENER_FILE)

    def _sync_screener(self) -> None:
        """Before the first screen this attempt runs: continue the screener's episode sampler and weight generator
        from where the last replayed screen left them (its ``screener.pt``; a folder written before that file
        existed is caught up by redrawing the replayed screens' episodes and networks)."""
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
            trainer.train_sampler.set_state(state["train_sampler"])
            trainer.gen.set_state(state["gen"])
            return
        for i in replayed:                          # no state file: redraw what the replayed screens drew
            n = self.stages[i].episodes
            trainer.train_sampler.sample(n, device=trainer.device, dtype=trainer.dtype)
            trainer._weights(n)

    def remaining(self) -> int:
        return max(0, self.budget - self.used)

    # ------------------------------------------------------------------ the searches
    def start(self) -> list[str]:
        """The first support: F0 (the error-driven base) when the pool has it, else the best-screened term."""
        if "F0" in self.pool:
            return ["F0"]
        scores = self.screen({}, "screen from 0").scores or {}
        return [max(scores, key=scores.get)]

    def forward(self) -> list[Stage]:
        """Greedy forward selection: screen, add the best candidate, refit; up to max_terms terms."""
        k_max = min(self.spec.search.max_terms, len(self.pool))
        support = self.start()
        n_screen = self.spec.search.screen_episodes
        per_fit = max(1, (self.remaining() - (k_max - 1) * n_screen) // k_max)
        self.planned = max(self.budget, self.used + k_max * per_fit + (k_max - 1) * n_screen)
        init = self.spec.rule.initial_theta()
        fits = [self.fit(support, {t: init.get(t, 0.0) for t in support}, per_fit, f"fit {len(support)} terms")]
        while len(support) < k_max and not self.stopped:
            scores = self.screen(fits[-1].theta, f"screen for term {len(support) + 1}").scores or {}
            candidates = {t: s for t, s in scores.items() if t not in support and math.isfinite(s)}
            if not candidates:
                break
            support = [*support, max(candidates, key=candidates.get)]
            fits.append(self.fit(support, fits[-1].theta, per_fit, f"fit {len(support)} terms"))
        return fits

    def backward(self) -> list[Stage]:
        """Dense fit of the pool, then drop the smallest-effect term and refit, down to one term."""
        init = self.spec.rule.initial_theta()
        R = len(self.pool)
        dense = self.fit(self.pool, init, max(1, self.remaining() * 2 // 5), f"fit {R} terms")
        fits = [dense]
        per_fit = max(1, self.remaining() // max(1, R - 1))
        s = dict(zip(self.pool, self.screener().scale.tolist(), strict=True))
        while len(fits[-1].terms) > 1 and not self.stopped:
            cur = fits[-1]
            effect = {t: abs(cur.theta[t]) / max(s[t], 1e-30) for t in cur.terms if t != "F0"} or \
                {t: abs(cur.theta[t]) for t in cur.terms}
            keep = [t for t in cur.terms if t != min(effect, key=effect.get)]
            fits.append(self.fit(keep, cur.theta, per_fit, f"fit {len(keep)} terms"))
        return fits

    def path(self) -> list[Stage]:
        """The lasso path from the sparse end (glmnet's order) with a KKT working set: fit the first support (F0),
        screen it, λ_max = max_r |ḡ_r| − z·se_r (∂L/∂φ_r; no term enters above it), then for λ_k = λ_max·2^{−k/2} fit
        only the working set — the support, the nonzero terms and every zero term whose KKT condition |ḡ_r| ≤ λ_k
        is violated significantly at the previous solution, |ḡ_r| − z·se_r > λ_k (screened over n episodes,
        z = KKT_Z) — with proximal L1 (F0 unpenalized) and warm starts, screening again at each λ's solution;
        each support the path visits is refit without L1 (debiasing). A term thus enters when its averaged
        gradient clearly exceeds λ, not when one noisy screening says so: the gated terms' gradients are as large
        as F2's on average but several times noisier."""
        init = self.spec.rule.initial_theta()
        n_lambda = self.spec.search.n_lambda
        support = self.start()
        first = self.fit(support, {t: init.get(t, 0.0) for t in support}, max(1, self.remaining() // 5),
                         f"fit {len(support)} terms")
        screen = self.screen(first.theta, "screen at λ_max")
        lam_max = self._lambda_max(screen, support)
        n_screen = self.spec.search.screen_episodes
        per_lambda = max(1, (self.remaining() * 3 // 5 - (n_lambda - 1) * n_screen) // n_lambda)
        cur, supports, fits = first, [], [first]
        for k in range(1, n_lambda + 1):
            if self.stopped:
                break
            lam = lam_max * LAMBDA_RATIO ** k
            active = [t for t in self.pool if t in support or cur.theta.get(t, 0.0) != 0.0
                      or self._violates(screen, t, lam)]
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

    @staticmethod
    def _violation(screen: Stage, t: str) -> float:
        """|ḡ_t| − KKT_Z·se_t: by how much term t's screened gradient exceeds λ = 0 significantly (−inf if not
        finite). The KKT condition |ḡ_t| ≤ λ is violated significantly when this exceeds λ."""
        g = abs((screen.gradient or {}).get(t, 0.0))
        se = (screen.gradient_se or {}).get(t, 0.0)
        return g - KKT_Z * se if math.isfinite(g) and math.isfinite(se) else -math.inf

    @classmethod
    def _lambda_max(cls, screen: Stage, support: list[str]) -> float:
        """The smallest λ at which no zero term violates its KKT condition significantly: the largest violation
        over the terms outside the support (the plain max |ḡ_r| when no violation is significant)."""
        outside = [t for t in (screen.gradient or {}) if t not in support]
        best = max((cls._violation(screen, t) for t in outside), default=0.0)
        if best > 0:
            return best
        return max((abs(g) for t, g in (screen.gradient or {}).items() if t in outside and math.isfinite(g)),
                   default=1.0)

    @classmethod
    def _violates(cls, screen: Stage, t: str, lam: float) -> bool:
        """Whether term t's screened gradient violates |ḡ_t| ≤ λ significantly: |ḡ_t| − KKT_Z·se_t > λ."""
        return cls._violation(screen, t) > lam

    # ------------------------------------------------------------------ scoring
    def score(self, fits: list[Stage]) -> list[FrontPoint]:
        """Every distinct support's refit θ scored on the same held-out episodes; the selected one marked."""
        episodes = self.spec.search.front_eval_episodes or self.spec.meta.eval_episodes
        by_support: dict[tuple[str, ...], Stage] = {}
        for f in fits:
            by_support[tuple(sorted(f.terms))] = f          # the latest fit of a support wins
        front = []
        for f in sorted(by_support.values(), key=lambda f: len(f.terms)):
            trainer = MetaTrainer(self._subspec(f.terms, f.theta, 1))
            acc, ci, n = trainer.evaluate(episodes) if episodes else (None, None, 0)
            rule = learned_rule(f.terms, f.theta)
            front.append(FrontPoint(terms=f.terms, theta=f.theta, rule={**rule.to_dict(), "coefficients_raw": f.theta},
                                    n_terms=len(f.terms), complexity=complexity(f.terms), heldout_accuracy=acc,
                                    heldout_ci95=ci, heldout_episodes=n, stage=f.label))
        if front:
            front[select(front)].selected = True
        return front

    def run(self) -> tuple[list[FrontPoint], list[Stage]]:
        fits = getattr(self, self.spec.search.method)()
        if not self._started and self.cursor > 0:      # every stage was replayed: only the scoring is left
            self._started = True
            self._announce(self.used, self.cursor, None, 0)
        return ([] if self.stopped else self.score(fits)), fits


def discover_search(spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
                    checkpoint_dir: Path | str | None = None,
                    should_stop: Callable[[], bool] | None = None) -> DiscoveryResult:
    """Run spec.search over spec.rule.terms and return the selected rule with the whole front."""
    t0 = time.perf_counter()
    search = Search(spec, progress, checkpoint_dir, should_stop)
    front, fits = search.run()
    chosen = next((p for p in front if p.selected), None)
    last = fits[-1] if fits else None
    theta = chosen.theta if chosen else (last.theta if last else {})
    terms = chosen.terms if chosen else (last.terms if last else [])
    rule = chosen.rule if chosen else {**learned_rule(terms, theta).to_dict(), "coefficients_raw": theta} if terms \
        else {}
    screens = [s for s in search.stages if s.kind == "screen"]
    return DiscoveryResult(
        rule=rule, theta=theta, history=search.history, theta_history=[h["theta"] for h in search.history],
        heldout_accuracy=chosen.heldout_accuracy if chosen else None,
        heldout_ci95=chosen.heldout_ci95 if chosen else None,
        heldout_episodes=chosen.heldout_episodes if chosen else 0,
        diverged_episodes=sum(h.get("dropped_episodes", 0) for h in search.history),
        skipped_steps=sum(1 for h in search.history if h.get("skipped")), stopped=search.stopped,
        resumed_from_episode=search.resumed_from, wall_time_s=time.perf_counter() - t0,
        device=str(resolve_device(spec.resources.device)),
        spec=spec.model_dump(), front=front,
        search={"method": spec.search.method, "pool": search.pool, "episodes": search.used,
                **({"resumed": search.resumed} if search.resumed is not None else {}),
                "stages": [{"label": s.label, "kind": s.kind, "terms": s.terms, "episodes": s.episodes}
                           for s in search.stages],
                "screening": [{"label": s.label, "scores": s.scores, "effect": s.effect} for s in screens]})
