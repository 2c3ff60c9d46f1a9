"""Adam's learning rate per meta-step (meta.lr_schedule; docs/architecture.md, "Divergence").

'constant' keeps η; 'cosine' decays it over the run, η_t = η (f + (1 − f)(1 + cos(π t / T))/2), t = meta-steps
done, T = meta.episodes, f = meta.lr_final. η itself lives in the optimizer's param group as ``base_lr`` (halved by a
backtrack), so a checkpointed optimizer carries it and a resumed run continues the same schedule.
"""

from __future__ import annotations

import math

import torch

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
