"""The typed results that cross from the engine to the workers and the service: the progress event of a meta-step,
one point of an open search's front, and a finished discovery run."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ProgressEvent(BaseModel):
    """What the progress callback receives after every meta-step."""

    episode: int
    total: int
    meta_loss: float | None
    meta_accuracy: float | None
    theta: dict[str, float]
    alignment_deg: list[float] = Field(default_factory=list)
    e1: list[float] = Field(default_factory=list)
    skipped: bool = False
    dropped_episodes: int = 0
    backtracked: bool = False
    lr: float | None = None
    phase: str | None = None          # the search stage this step belongs to (open discovery), e.g. "fit 3 terms"


class FrontPoint(BaseModel):
    """One rule of an open search's front: its support, refit θ, complexity and held-out score."""

    terms: list[str]
    theta: dict[str, float]
    rule: dict
    n_terms: int
    complexity: int
    heldout_accuracy: float | None
    heldout_ci95: float | None
    heldout_episodes: int
    stage: str
    selected: bool = False
    rule_id: int | None = None      # filled in by the service once the rule is stored


class DiscoveryResult(BaseModel):
    """A finished (or stopped) discovery run: the rule, its θ trajectory, curves and held-out evaluation."""

    rule: dict
    theta: dict[str, float]
    history: list[dict]
    theta_history: list[dict[str, float]]
    heldout_accuracy: float | None
    heldout_ci95: float | None
    heldout_episodes: int
    diverged_episodes: int
    skipped_steps: int
    stopped: bool = False
    resumed_from_episode: int | None = None   # the checkpointed episode this run resumed from (None: fresh)
    wall_time_s: float
    device: str
    spec: dict
    front: list[FrontPoint] = Field(default_factory=list)   # open discovery (spec.search): every support found
    search: dict | None = None                              # open discovery: method, pool, stages, screening
