"""What the outer optimizer does around Adam's step (docs/architecture.md, "Divergence").

**Learning rate** (meta.lr_schedule): 'constant' keeps η; 'cosine' decays it over the run,
η_t = η (f + (1 − f)(1 + cos(π t / T))/2), t = meta-steps done, T = meta.episodes, f = meta.lr_final. η itself
lives in the optimizer's param group as ``base_lr`` (halved by a backtrack), so a checkpointed optimizer carries it
and a resumed run continues the same schedule.

**Which θ a fit returns** (meta.keep): 'last' is θ after the last step; 'best' is θ where the exponential moving
average of the meta-train loss, ℓ̄_t = ℓ̄_{t−1} + (ℓ_t − ℓ̄_{t−1})/N (N = meta.keep_window), was lowest, counted from
step N on. Only meta-train episodes enter it (never held-out ones), so it is early stopping on the training
objective: a fit that walks off a cliff late (an error-Hebbian coefficient grown past stability) returns the θ from
before the cliff.

**Cliff guard** (meta.rollback = ρ > 0): the same moving average watches the run; when ℓ̄_t > (1 + ρ) min ℓ̄, φ returns
to the φ of that minimum, Adam's moments are cleared and η is halved (base_lr too), and ℓ̄ restarts from the minimum.
A run that walks off a cliff then goes on from before it with smaller steps instead of ending beyond it; a run
without a cliff never triggers it and is unchanged step for step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from discovery.results import ProgressEvent
from discovery.spec import MetaSpec


def lr_factor(meta: MetaSpec, episode: int) -> float:
    """The schedule's multiplier of η after ``episode`` meta-steps: 1 for 'constant', the cosine curve otherwise."""
    if meta.lr_schedule == "constant":
        return 1.0
    progress = min(episode / max(meta.episodes, 1), 1.0)
    return meta.lr_final + (1 - meta.lr_final) * 0.5 * (1 + math.cos(math.pi * progress))


def apply_schedule(opt: torch.optim.Optimizer, meta: MetaSpec, episode: int) -> None:
    """Set every param group's lr to base_lr · lr_factor before the optimizer's step."""
    factor = lr_factor(meta, episode)
    for group in opt.param_groups:
        group["lr"] = group.setdefault("base_lr", group["lr"]) * factor


def halve_lr(opt: torch.optim.Optimizer) -> None:
    """A backtrack's step-size cut: base_lr and the current lr both halved."""
    for group in opt.param_groups:
        group["base_lr"] = 0.5 * group.get("base_lr", group["lr"])
        group["lr"] *= 0.5


def restart_from(opt: torch.optim.Optimizer, phi: Tensor, value: Tensor) -> None:
    """A backtrack: φ ← ``value`` in place, Adam's moments cleared and the learning rate halved (``halve_lr``)."""
    with torch.no_grad():
        phi.copy_(value.to(phi))
    opt.state.clear()
    halve_lr(opt)


class BestTheta:
    """The φ of the lowest EMA of the meta-train loss (see the module docstring), meta.keep's policy (`restore`
    puts it back under 'best' and does nothing under 'last') and meta.rollback's cliff test; checkpointable."""

    def __init__(self, meta: MetaSpec):
        self.keep = meta.keep == "best"
        self.rollback = float(meta.rollback)
        self.active = self.keep or self.rollback > 0
        self.window = int(meta.keep_window)
        self.steps = 0
        self.ema: float | None = None
        self.best = math.inf
        self.phi: Tensor | None = None

    def update(self, loss: float | None, phi: Tensor) -> bool:
        """Fold one meta-step's loss (None: a skipped step, ignored) into the EMA; keep φ if it is the lowest.
        True when the cliff guard fires: ℓ̄ > (1 + ρ) min ℓ̄ (never with meta.rollback 0)."""
        if not self.active or loss is None or not math.isfinite(loss):
            return False
        self.steps += 1
        self.ema = loss if self.ema is None else self.ema + (loss - self.ema) / self.window
        if self.steps < self.window:
            return False
        if self.ema < self.best:
            self.best, self.phi = self.ema, phi.detach().clone()
        return self.rollback > 0 and self.phi is not None and self.ema > (1 + self.rollback) * self.best

    def restore(self, phi: Tensor) -> None:
        """φ ← the kept φ, in place (nothing under meta.keep 'last', or when no step has counted yet)."""
        if self.keep and self.phi is not None:
            with torch.no_grad():
                phi.copy_(self.phi.to(phi))

    def state_dict(self) -> dict:
        return {"steps": self.steps, "ema": self.ema, "best": self.best, "phi": self.phi}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.steps, self.ema, self.best, self.phi = state["steps"], state["ema"], state["best"], state["phi"]


def guard_cliff(best: BestTheta, opt: torch.optim.Optimizer, phi: Tensor, event: ProgressEvent,
                phi_before: Tensor, theta_dict: Callable[[], dict[str, float]]) -> ProgressEvent:
    """Fold the step's loss into ``best`` (φ_before: the φ its episodes ran with); on a cliff (meta.rollback, see
    the module docstring) φ ← the φ of the lowest ℓ̄, Adam's moments cleared, η halved, ℓ̄ ← its minimum, and the
    event is marked ``backtracked`` with the restored θ (``theta_dict``) and lr, as a skip backtrack is."""
    if not best.update(event.meta_loss, phi_before):
        return event
    restart_from(opt, phi, best.phi)
    best.ema = best.best
    return event.model_copy(update={"backtracked": True, "theta": theta_dict(), "lr": opt.param_groups[0]["lr"]})
