"""The parts of the open search that every search shares (docs/architecture.md "the family contract"): the stage
records, the family's side of the search (``SearchBackend``) with its optional hooks and ``SearchPlan``, the stage
log with its replay and resume announcement (``StageLog``), Rao's score test and the front's selection rule. The
search itself is discovery.search.generic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import BaseModel

from discovery.results import FrontPoint, ProgressEvent
from discovery.spec import DiscoverySpec

STATE_FILE = "search.json"
SCREENER_FILE = "screener.pt"   # the screener's sampler and generator state after a screen stage (in stage_<i>/)
KKT_Z = 2.0           # a zero term joins the path's working set when |ḡ_r| − KKT_Z·se_r > λ (a significant violation)
LAMBDA_RATIO = 2 ** -0.5   # λ_k = λ_max · LAMBDA_RATIO^k
SCREENER_STREAM = 10_000   # the screener's stream (fit stage i uses stream i + 1)


class Stage(BaseModel):
    """A finished stage of the search (what `search.json` records)."""

    kind: str                        # "fit", "trial", "screen"
    label: str
    terms: list[str]
    theta: dict[str, float]
    episodes: int
    loss: float | None = None                        # fit: its training loss, when the family's fit reports one
    best_theta: dict[str, float] | None = None       # gradient-free screening: θ_r of each term's best lone trial
    scores: dict[str, float] | None = None           # screening: |t| of the score test per pool term
    effect: dict[str, float] | None = None           # screening: |∂L/∂θ_r| in units of effect
    gradient: dict[str, float] | None = None         # screening: mean ∂L/∂φ_r (φ = θ/s, the optimizer's variable)
    gradient_se: dict[str, float] | None = None      # screening: its standard error s_r/√n
    history: list[dict] = []


@dataclass(frozen=True)
class SearchPlan:
    """How the forward search proceeds for a family (defaults: the plain forward selection of the module
    docstring, which the feed-forward and recurrent families use)."""

    trials: int = 1                  # screened candidates fitted on trial (role "trial"); the lowest loss joins
    refit_trial: bool = True         # refit the support after its trial (False: the trial fit is the support's)
    rescreen: bool = True            # screen at every support's θ (False: rank once, by the first screening)
    first_by_trials: bool = False    # choose the first term like the others (from the empty rule), not start()
    eliminate: bool = False          # after forward: backward elimination by the lowest training loss
    final_refit: bool = False        # refit the selected support alone (role "final"); it replaces its point
    budget: int | None = None        # the job's planned episodes (progress total); None: meta.episodes


class FitOutcome(BaseModel):
    """One fit by a family's own optimizer (``SearchBackend.fit_stage``): θ, the episodes it used, its training
    loss, its history (records with ``episode`` counted from the fit's start)."""

    theta: dict[str, float]
    episodes: int
    loss: float | None = None
    history: list[dict] = []


class ScreenOutcome(BaseModel):
    """A family's own screening (``SearchBackend.screen_stage``): a score per pool term (higher: more promising),
    the episodes it used, θ of each term's best lone trial (gradient-free screenings) and its history."""

    scores: dict[str, float]
    episodes: int
    best_theta: dict[str, float] | None = None
    history: list[dict] = []


class SearchTrainer(Protocol):
    """What the search needs of a family's meta-trainer (discovery.feedforward.checkpoint.Checkpointed gives
    resume/run): θ = s ⊙ φ with Adam on φ, its episode count and history."""

    spec: Any
    episode: int
    history: list[dict]
    phi: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype

    def resume(self, folder: Path | None) -> int | None: ...
    def run(self, progress: Callable[[Any], None] | None, folder: Path | None,
            should_stop: Callable[[], bool] | None, resume: bool = True) -> bool: ...
    def theta_dict(self) -> dict[str, float]: ...


class SearchBackend(Protocol):
    """A family's side of the search (see the module docstring):

    ``subspec(spec, terms, theta, episodes, **meta)`` the spec of one fit (``terms`` warm-started at ``theta``,
    ``episodes`` meta-steps, no search); ``trainer(spec, stream)`` a meta-trainer drawing from random stream
    ``stream``; ``screen_gradients(trainer, n)`` (per-episode meta-loss (n,), per-episode ∂L/∂θ_r (R, n)) at the
    trainer's θ over n fresh episodes; ``norms(trainer)`` ‖F_r‖ on fresh networks (the unit of effect);
    ``streams`` / ``set_streams`` the trainer's random streams as checkpointable state; ``redraw(trainer, n)``
    advance them as a screen of n episodes would (folders without screener.pt); ``evaluate(trainer, episodes)``
    (held-out accuracy, 95 % half-width, episodes); ``rule(terms, theta, name)`` the stored rule dict with
    ``coefficients_raw``; ``complexity(terms)``; ``device(spec)``.

    Optional (a family whose optimizer is not the trainer's Adam, docs/architecture.md): ``plan(spec)`` a
    :class:`SearchPlan`; ``fit_stage(spec, terms, theta, role, label, report, should_stop)`` a :class:`FitOutcome`
    (role "fit", "trial", "final" or "fixed"; ``report`` takes ProgressEvents counted from the fit's start);
    ``fit_trials(spec, support, theta, candidates, label, report, should_stop)`` the trial fits of support +
    each candidate at once; ``screen_stage(spec, theta, label, report)`` a :class:`ScreenOutcome`;
    ``front_points(spec, stages, role)`` the front points of fits ("final": of the final refit);
    ``result_extra(spec, search, front)`` the family's keys of the result's ``search``."""

    #: the first support when the pool holds it (feed-forward: F0); empty: screen from θ = 0
    base_terms: tuple[str, ...]
    #: the search methods this family's trainer supports
    methods: tuple[str, ...]

    def subspec(self, spec: DiscoverySpec, terms: list[str], theta: dict[str, float], episodes: int,
                **meta: Any) -> DiscoverySpec: ...
    def trainer(self, spec: DiscoverySpec, stream: int = 0) -> SearchTrainer: ...
    def screen_gradients(self, trainer: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]: ...
    def norms(self, trainer: Any) -> torch.Tensor: ...
    def streams(self, trainer: Any) -> dict[str, Any]: ...
    def set_streams(self, trainer: Any, state: dict[str, Any]) -> None: ...
    def redraw(self, trainer: Any, n: int) -> None: ...
    def evaluate(self, trainer: Any, episodes: int) -> tuple[float | None, float | None, int]: ...
    def rule(self, terms: list[str], theta: dict[str, float], name: str | None = None) -> dict[str, Any]: ...
    def complexity(self, terms: list[str]) -> int: ...
    def device(self, spec: DiscoverySpec) -> str: ...


def score_test(loss: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rao's score test from per-episode losses (n,) and gradients (R, n), the episodes with a non-finite value
    left out: (|t_r| = |ḡ_r| / (s_r/√k), ḡ_r, s_r/√k) in float64 (|t| = ∞ where s_r = 0 < |ḡ_r|)."""
    finite = torch.isfinite(loss) & torch.isfinite(grad).all(0)
    g = grad[:, finite].double()
    k = g.shape[1]
    mean = g.mean(1) if k else torch.zeros(grad.shape[0], dtype=torch.float64)
    sem = g.std(1) / math.sqrt(k) if k > 1 else torch.full_like(mean, math.inf)
    return torch.where(sem > 0, mean.abs() / sem, torch.where(mean != 0, math.inf, 0.0)), mean, sem


def select(front: list[FrontPoint]) -> int:
    """Index of the simplest point whose accuracy is within the 95 % CI of the best (ties: higher accuracy)."""
    scored = [(i, p) for i, p in enumerate(front) if p.heldout_accuracy is not None]
    if not scored:
        return len(front) - 1
    best = max(scored, key=lambda ip: ip[1].heldout_accuracy)[1]
    floor = best.heldout_accuracy - (best.heldout_ci95 or 0.0)
    ok = [(p.n_terms, p.complexity, -p.heldout_accuracy, i) for i, p in scored if p.heldout_accuracy >= floor]
    return min(ok)[3]


class StageLog:
    """The finished stages of a search, listed in ``checkpoint_dir/<state_file>`` (with the spec they belong to)
    and replayed in order by a resumed attempt; ``stage_<i>/`` holds stage i's own checkpoint. The first stage an
    attempt runs after replaying (or restoring inside a stage) announces where it resumed."""

    state_file: str = STATE_FILE
    stage_model: type[BaseModel] = Stage

    def __init__(self, spec: DiscoverySpec, progress: Callable[[ProgressEvent], None] | None = None,
                 checkpoint_dir: Path | str | None = None, should_stop: Callable[[], bool] | None = None):
        self.spec = spec
        self.progress = progress
        self.folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.should_stop = should_stop
        self.budget = spec.meta.episodes
        self.used = 0                      # episodes consumed by finished stages
        self.planned = self.budget         # the job's total episodes as planned (screens included)
        self.stages: list[Any] = self._load_state()
        self.cursor = 0                    # index of the next stage (replayed from the state file when done)
        self.history: list[dict] = []
        self.stopped = False
        self.resumed_from: int | None = None   # the job's episode where this attempt resumed (None: a fresh run)
        self.resumed: dict[str, Any] | None = None   # {stage, label, episode, within_stage} when it resumed
        self._started = False              # whether a stage has run (not replayed) in this attempt

    def _load_state(self) -> list[Any]:
        if self.folder is None or not (self.folder / self.state_file).exists():
            return []
        raw = json.loads((self.folder / self.state_file).read_text())
        if raw.get("spec") != self.spec.model_dump(mode="json"):
            return []
        return [self.stage_model.model_validate(s) for s in raw["stages"]]

    def _save_state(self) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (self.state_file + ".tmp")
        tmp.write_text(json.dumps({"spec": self.spec.model_dump(mode="json"),
                                   "stages": [s.model_dump(mode="json") for s in self.stages]}))
        tmp.replace(self.folder / self.state_file)

    def _replay(self) -> Any | None:
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

    def _record(self, stage: Any) -> Any:
        self.stages.append(stage)
        self.cursor += 1
        self.used += stage.episodes
        self._save_state()
        return stage

    def _finish_replay(self) -> None:
        """When every stage was replayed (only the scoring is left): announce the resume there."""
        if not self._started and self.cursor > 0:
            self._started = True
            self._announce(self.used, self.cursor, None, 0)


def training_loss(stage: Stage) -> float:
    """A fit's training loss (∞ when unknown or not finite): trials and eliminations keep the lowest."""
    return stage.loss if stage.loss is not None and math.isfinite(stage.loss) else math.inf


def kkt_violation(screen: Stage, t: str) -> float:
    """|ḡ_t| − KKT_Z·se_t: by how much term t's screened gradient exceeds λ = 0 significantly (−inf if not finite).
    The KKT condition |ḡ_t| ≤ λ of the L1 path is violated significantly when this exceeds λ."""
    g = abs((screen.gradient or {}).get(t, 0.0))
    se = (screen.gradient_se or {}).get(t, 0.0)
    return g - KKT_Z * se if math.isfinite(g) and math.isfinite(se) else -math.inf


def lambda_max(screen: Stage, support: list[str]) -> float:
    """The smallest λ at which no zero term violates its KKT condition significantly: the largest violation over
    the terms outside the support (the plain max |ḡ_r| when no violation is significant)."""
    outside = [t for t in (screen.gradient or {}) if t not in support]
    best = max((kkt_violation(screen, t) for t in outside), default=0.0)
    if best > 0:
        return best
    return max((abs(g) for t, g in (screen.gradient or {}).items() if t in outside and math.isfinite(g)),
               default=1.0)
